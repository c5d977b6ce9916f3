"""ldm/training/checkpoint.py + ema.py + optim.py: atomic save, resolve, exact load."""
import copy
import os

import pytest
import torch
from accelerate.state import AcceleratorState, GradientState

from ldm.training import CheckpointManager, make_accelerator, make_adamw, make_ema, make_lr_scheduler


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def _setup(tmp_path):
    accelerator = make_accelerator(output_dir=tmp_path, log_with=None)
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model, optimizer = accelerator.prepare(model, optimizer)
    scheduler = make_lr_scheduler(optimizer, name="cosine", warmup_steps=1, max_steps=10,
                                  accelerator=accelerator)
    ema = make_ema(model, accelerator=accelerator, decay=0.9)
    return accelerator, model, optimizer, scheduler, ema


def _train_step(model, optimizer, scheduler, ema):
    loss = model(torch.randn(3, 4).to(next(model.parameters()).device)).square().mean()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    scheduler.step()
    ema.step(model.parameters())


def _snapshot(model, optimizer, scheduler, ema):
    return ([p.detach().clone() for p in model.parameters()], scheduler.get_last_lr(),
            [p.clone() for p in ema.shadow_params], ema.optimization_step,
            [s["exp_avg"].clone() for s in optimizer.state_dict()["state"].values()])


def test_save_load_restores_everything_and_prunes(tmp_path):
    accelerator, *parts = _setup(tmp_path)
    manager = CheckpointManager(tmp_path, keep_last=2)
    for step in range(1, 4):
        _train_step(*parts)
        manager.save(accelerator, step)
    saved = _snapshot(*parts)
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*")) == ["step-2", "step-3"]
    for _ in range(2):
        _train_step(*parts)
    assert not torch.equal(_snapshot(*parts)[0][0], saved[0][0])
    assert manager.load(accelerator, manager.resolve("latest")) == 3
    restored = _snapshot(*parts)
    assert restored[1] == saved[1] and restored[3] == saved[3]
    for got, want in zip(restored[0] + restored[2] + restored[4], saved[0] + saved[2] + saved[4]):
        assert torch.equal(got, want)


def test_crash_during_save_keeps_previous_latest(tmp_path, monkeypatch):
    accelerator, *parts = _setup(tmp_path)
    manager = CheckpointManager(tmp_path)
    _train_step(*parts)
    manager.save(accelerator, 1)
    good = [p.detach().clone() for p in parts[0].parameters()]
    _train_step(*parts)

    def crash(src, dst):
        raise OSError("disk full")
    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        manager.save(accelerator, 2)
    monkeypatch.undo()
    assert manager.resolve("latest").name == "step-1"
    assert manager.load(accelerator, manager.resolve("latest")) == 1
    assert all(torch.equal(p, q) for p, q in zip(parts[0].parameters(), good))
    _train_step(*parts)
    manager.save(accelerator, 2)  # the stale temporary folder does not block the next save
    assert manager.resolve("latest").name == "step-2"


def test_resolve_reports_missing_checkpoints(tmp_path):
    manager = CheckpointManager(tmp_path)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        manager.resolve("latest")
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        manager.resolve(str(tmp_path / "nowhere"))


def test_make_adamw_is_fused_on_cpu_and_matches_the_per_tensor_update():
    """The fused kernel does AdamW's update: parameters track torch's plain per-tensor loop over 5 steps."""
    torch.manual_seed(0)
    reference = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.GELU(), torch.nn.Linear(5, 3))
    model, initial = copy.deepcopy(reference), copy.deepcopy(reference)
    ours = make_adamw(model.parameters(), lr=0.05, weight_decay=0.1)
    plain = torch.optim.AdamW(reference.parameters(), lr=0.05, weight_decay=0.1, foreach=False)
    assert ours.defaults["fused"] and not plain.defaults["fused"]
    for step in range(5):
        x = torch.randn(4, 6, generator=torch.Generator().manual_seed(step))
        for net, optimizer in ((model, ours), (reference, plain)):
            net(x).square().mean().backward()
            optimizer.step()
            optimizer.zero_grad()
    for got, want, start in zip(model.parameters(), reference.parameters(), initial.parameters()):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        assert (got - start).abs().min() > 0.01  # every weight moved: the comparison is not of untouched ones


def test_make_adamw_falls_back_where_no_fused_kernel_exists():
    integer = torch.nn.Parameter(torch.zeros(3, dtype=torch.int64), requires_grad=False)
    assert not make_adamw([torch.nn.Parameter(torch.zeros(2)), integer], lr=0.1).defaults["fused"]
