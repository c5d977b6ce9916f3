"""Deterministic per-step data order and randomness: exact resumes, results independent of process count.

The rule both trainers follow: training step `s` (one micro-batch when accumulating gradients) always sees the
same *global* batch of dataset indices and the same random draws, whatever the number of processes and
however often the run was stopped and resumed. Indices come from a permutation seeded by `(seed, epoch)`;
every random draw of step `s` comes from a `torch.Generator` seeded by `(seed, s)` that draws for the whole
global batch, and each process keeps its own slice `rank * b : (rank + 1) * b`. With data-parallel gradient
averaging, 2 processes × batch b then compute the same update as 1 process × batch 2b.
"""
from __future__ import annotations

import functools
import logging

import numpy as np
import torch
from torch.utils.data import Sampler

logger = logging.getLogger(__name__)

_STEP_STRIDE = 1_000_003  # a prime: (seed, step) pairs map to distinct generator seeds for any realistic run


def _mixed_seed(seed: int, counter: int) -> int:
    return (seed * _STEP_STRIDE + counter) % (2**63 - 1)


def global_batch_indices(num_items: int, global_batch_size: int, step: int, seed: int) -> torch.Tensor:
    """Dataset indices of the global batch of `step`: LongTensor (global_batch_size,) in [0, num_items).

    Step s reads positions [s·G, (s+1)·G) of the endless stream made of one fresh permutation per epoch
    (seeded by `(seed, epoch)`), so a batch may straddle two epochs and every item is seen once per epoch.
    """
    if num_items <= 0:
        raise ValueError("the dataset is empty, so there is nothing to train on.")
    start = step * global_batch_size
    picked = []
    for position in range(start, start + global_batch_size):
        epoch, offset = divmod(position, num_items)
        picked.append((epoch, offset))
    perms = {epoch: _epoch_permutation(num_items, seed, epoch) for epoch, _ in picked}
    return torch.stack([perms[epoch][offset] for epoch, offset in picked])


@functools.lru_cache(maxsize=4)  # a batch touches at most two epochs; avoid a randperm per step
def _epoch_permutation(num_items: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(num_items, generator=torch.Generator().manual_seed(_mixed_seed(seed, epoch)))


def step_generator(seed: int, step: int, device: torch.device | str = "cpu") -> torch.Generator:
    """The generator for every random draw of `step` (noise, timesteps, dropout masks, posterior samples)."""
    # Offset by 1 so step generators never coincide with the epoch permutations above.
    return torch.Generator(device=device).manual_seed(_mixed_seed(seed + 1, step))


def local_slice(tensor: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """This process's share of a global-batch tensor: rows [rank·b, (rank+1)·b), b = len / world_size."""
    if tensor.shape[0] % world_size:
        raise ValueError(f"a global batch of {tensor.shape[0]} does not split over {world_size} processes.")
    b = tensor.shape[0] // world_size
    return tensor[rank * b:(rank + 1) * b]


def sliced_randn(local_shape: tuple[int, ...], *, generator: torch.Generator, rank: int, world_size: int,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard normal noise of shape `local_shape` = (b, ...): drawn for the global batch (world_size·b, ...)
    from `generator`, then sliced for `rank`, so the draw is independent of the process count."""
    global_shape = (local_shape[0] * world_size, *local_shape[1:])
    noise = torch.randn(global_shape, generator=generator, device=generator.device, dtype=dtype)
    return local_slice(noise, rank, world_size).to(device)


class StepBatchSampler(Sampler[list[int]]):
    """Batch sampler for `DataLoader(dataset, batch_sampler=...)`: yields this process's local index list for
    steps `start_step, start_step + 1, …, end_step - 1` (len = end_step - start_step).

    Do not pass the resulting DataLoader to `accelerator.prepare` — it is already sharded.
    """

    def __init__(self, num_items: int, *, batch_size: int, start_step: int, end_step: int, seed: int,
                 rank: int = 0, world_size: int = 1):
        self.num_items, self.batch_size, self.seed = num_items, batch_size, seed
        self.start_step, self.end_step = start_step, end_step
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        return max(0, self.end_step - self.start_step)

    def __iter__(self):
        for step in range(self.start_step, self.end_step):
            indices = global_batch_indices(self.num_items, self.batch_size * self.world_size, step, self.seed)
            yield local_slice(indices, self.rank, self.world_size).tolist()


class BucketBatches:
    """Global batches each drawn from one aspect-ratio bucket, deterministic in (seed, step) like
    `global_batch_indices`, which serves a single bucket unchanged.

    Epoch e permutes each bucket (seeded by (seed, e)), cuts it into batches of `global_batch_size`, filling the
    last one from the start of the same permutation, and shuffles the batches of all buckets together; step s
    takes batch s mod E of epoch s // E, E = Σ ceil(bucket size / global batch). Every image is seen at least
    once per epoch and every batch has one latent size.
    """

    def __init__(self, bucket_items: list[np.ndarray], *, global_batch_size: int, seed: int):
        self.buckets = [torch.as_tensor(np.asarray(items, dtype=np.int64)) for items in bucket_items if len(items)]
        if not self.buckets:
            raise ValueError("the dataset is empty, so there is nothing to train on.")
        self.global_batch_size, self.seed = global_batch_size, seed
        self.batches_per_epoch = sum(-(-len(items) // global_batch_size) for items in self.buckets)

    def indices(self, step: int) -> torch.Tensor:
        """Item indices of the global batch of `step`: LongTensor (global_batch_size,), all of one bucket."""
        if len(self.buckets) == 1:
            positions = global_batch_indices(len(self.buckets[0]), self.global_batch_size, step, self.seed)
            return self.buckets[0][positions]
        epoch, batch = divmod(step, self.batches_per_epoch)
        return self._epoch(epoch)[batch]

    @functools.lru_cache(maxsize=2)
    def _epoch(self, epoch: int) -> list[torch.Tensor]:
        generator = torch.Generator().manual_seed(_mixed_seed(self.seed + 2, epoch))
        batches = []
        for items in self.buckets:
            order = items[torch.randperm(len(items), generator=generator)]
            count = -(-len(order) // self.global_batch_size)
            wrapped = order.repeat(-(-count * self.global_batch_size // len(order)))
            batches += list(wrapped[:count * self.global_batch_size].split(self.global_batch_size))
        return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


def _width(bucket: tuple[tuple[int, int], int]) -> tuple[int, int]:
    (height, width), _ = bucket
    return width, height


def bucket_batches(cache, *, unet, vae_factor: int, global_batch_size: int,
                   seed: int) -> BucketBatches:
    """The batch schedule over a `ldm.latent_shards.ShardedLatentCache`'s buckets (one bucket: the plain
    shuffled order); logs the images per bucket and checks every bucket's latents fit the U-Net's downsampling."""
    factor = 2 ** (len(unet.config.block_out_channels) - 1)
    sizes = {tuple(int(side) for side in name.split("x")): count for name, count in cache.bucket_sizes.items()}
    for (height, width), count in sizes.items():
        if height % factor or width % factor:
            raise ValueError(f"bucket {width * vae_factor}x{height * vae_factor} px gives latents not divisible "
                             f"by the U-Net's downsampling {factor}; use a --bucket-step that is a multiple of "
                             f"{factor * vae_factor}.")
    logger.info("images per bucket (width x height px): %s", ", ".join(
        f"{w * vae_factor}x{h * vae_factor}: {count}" for (h, w), count in sorted(sizes.items(), key=_width)))
    items = [np.arange(len(cache))] if len(sizes) == 1 else list(cache.bucket_items().values())
    return BucketBatches(items, global_batch_size=global_batch_size, seed=seed)
