"""ldm/training/batches.py: per-step data order and randomness independent of resumes and process count."""
import numpy as np
import torch

from ldm.training.batches import BucketBatches
from ldm.training import StepBatchSampler, global_batch_indices, local_slice, sliced_randn, step_generator


def test_each_epoch_is_a_permutation_and_steps_tile_the_stream():
    num_items, global_batch = 7, 3
    # 14 steps × 3 = 42 items = 6 epochs of 7
    stream = torch.cat([global_batch_indices(num_items, global_batch, s, seed=5) for s in range(14)])
    for epoch in range(6):
        assert sorted(stream[epoch * num_items:(epoch + 1) * num_items].tolist()) == list(range(num_items))
    assert not torch.equal(stream[:num_items], stream[num_items:2 * num_items])  # reshuffled every epoch


def test_same_step_same_batch_and_seed_changes_it():
    a = global_batch_indices(100, 8, 42, seed=0)
    assert torch.equal(a, global_batch_indices(100, 8, 42, seed=0))
    assert not torch.equal(a, global_batch_indices(100, 8, 42, seed=1))


def test_sampler_shards_cover_the_global_batch_and_resume_mid_run():
    full = list(StepBatchSampler(20, batch_size=4, start_step=0, end_step=6, seed=3))
    ranks = [list(StepBatchSampler(20, batch_size=2, start_step=0, end_step=6, seed=3, rank=r, world_size=2))
             for r in range(2)]
    assert [r0 + r1 for r0, r1 in zip(*ranks)] == full  # 2 processes × 2 == 1 process × 4
    resumed = list(StepBatchSampler(20, batch_size=4, start_step=4, end_step=6, seed=3))
    assert resumed == full[4:]


def test_sliced_noise_is_the_single_process_draw_split():
    whole = torch.randn((6, 2, 3), generator=step_generator(0, 9))
    parts = [sliced_randn((3, 2, 3), generator=step_generator(0, 9), rank=r, world_size=2) for r in range(2)]
    assert torch.equal(torch.cat(parts), whole)
    assert torch.equal(local_slice(whole, 1, 3), whole[2:4])
    assert not torch.equal(whole, torch.randn((6, 2, 3), generator=step_generator(0, 10)))


def test_bucket_batches_are_one_bucket_each_cover_every_item_and_repeat_exactly():
    buckets = [np.arange(0, 7), np.arange(7, 10), np.arange(10, 22)]
    schedule = BucketBatches(buckets, global_batch_size=4, seed=3)
    assert schedule.batches_per_epoch == 2 + 1 + 3
    bucket_of = {int(i): b for b, items in enumerate(buckets) for i in items}
    epoch = [schedule.indices(step) for step in range(6)]
    for batch in epoch:
        assert len(batch) == 4 and len({bucket_of[int(i)] for i in batch}) == 1
    assert set(torch.cat(epoch).tolist()) == set(range(22))  # every item at least once per epoch
    again = BucketBatches(buckets, global_batch_size=4, seed=3)
    assert all(torch.equal(again.indices(s), schedule.indices(s)) for s in (7, 3, 12))  # any order of asking
    assert any(not torch.equal(BucketBatches(buckets, global_batch_size=4, seed=4).indices(s), epoch[s])
               for s in range(6))
    single = BucketBatches([np.arange(10)], global_batch_size=4, seed=3)
    assert torch.equal(single.indices(5), global_batch_indices(10, 4, 5, 3))
