"""train_vae.py end to end with a tiny VAE on 32 px shapes: exact resume, the non-finite guard, the saved
vae/ folder and its measured scaling factor, metrics, and one-line errors."""
import json
import sys
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState, GradientState
from diffusers import AutoencoderKL
from safetensors.torch import load_file

import train_vae
from autoencoder import AutoencoderLoss, measure_scaling_factor
from ldm.data import open_dataset
from launching import launch_two_processes
from interrupting import interrupt_when_training, last_line
from tiny_components import skip_bitwise_comparison_on_cuda, tiny_vae

REPO = Path(__file__).resolve().parents[1]
DATA = "shapes:size=48"  # 48 train and 48 test images


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


@pytest.fixture(scope="module")
def vae_config(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny_vae")
    tiny_vae().save_config(folder)
    return folder / "config.json"


def _args(vae_config, out, *extra):
    return ["--data", DATA, "--output-dir", str(out), "--config", str(vae_config), "--batch-size", "2",
            "--lr", "1e-3", "--lr-schedule", "constant", "--warmup-steps", "3", "--disc-start", "1",
            "--val-images", "8", "--scaling-images", "16", "--sample-every", "2", "--val-every", "2",
            "--checkpoint-every", "2", *extra]


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "vae" / "diffusion_pytorch_model.safetensors")


def _raw_state(folder: Path, step: int) -> list[dict]:
    """The non-EMA VAE and discriminator state dicts of a checkpoint (registered objects 2 and 3)."""
    ckpt = folder / "checkpoints" / f"step-{step}"
    return [torch.load(ckpt / f"custom_checkpoint_{i}.pkl", weights_only=False, map_location="cpu")
            for i in (2, 3)]


@pytest.fixture(scope="module")
def straight_run(vae_config, tmp_path_factory) -> Path:
    """4 steps in one go, EMA on, 2 micro-batches per step, the discriminator on from step 1."""
    out = tmp_path_factory.mktemp("straight")
    assert train_vae.main(_args(vae_config, out, "--max-steps", "4", "--ema", "--grad-accum", "2")) == 0
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    return out


def test_two_steps_resume_two_steps_equals_four(straight_run, vae_config, tmp_path):
    common = _args(vae_config, tmp_path, "--ema", "--grad-accum", "2")
    assert train_vae.main(common + ["--max-steps", "2"]) == 0
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    assert train_vae.main(common + ["--max-steps", "4", "--resume", "latest"]) == 0
    resumed, straight = _weights(tmp_path), _weights(straight_run)
    assert resumed.keys() == straight.keys()
    skip_bitwise_comparison_on_cuda()
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)  # EMA weights, saved at the end
    for got, want in zip(_raw_state(tmp_path, 4), _raw_state(straight_run, 4)):
        assert all(torch.equal(got[k], want[k]) for k in want)  # raw VAE and discriminator weights
    assert not torch.equal(_raw_state(straight_run, 2)[0]["decoder.conv_out.weight"],
                           _raw_state(straight_run, 4)[0]["decoder.conv_out.weight"])  # it did train


def test_saved_vae_loads_with_stock_diffusers_and_measured_scaling(straight_run):
    vae = AutoencoderKL.from_pretrained(straight_run / "vae")
    train_set = open_dataset(DATA, resolution=32, split="train")
    picked = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(0))[:16].tolist()
    pixel_values = torch.stack([train_set[i]["pixel_values"] for i in picked])
    expected = measure_scaling_factor(vae, [pixel_values[:2 * k + 2][-2:] for k in range(8)],
                                      generator=torch.Generator().manual_seed(0))
    assert vae.config.scaling_factor == pytest.approx(expected, rel=1e-6)
    assert vae.config.scaling_factor != 1.0


def test_metrics_grid_and_config_are_written(straight_run):
    metrics = json.loads((straight_run / "metrics.json").read_text())
    assert metrics["step"] == 4 and [h["step"] for h in metrics["history"]] == [2, 4]
    assert 0 < metrics["psnr"] < 60 and -1 <= metrics["ssim"] <= 1
    grids = sorted(p.name for p in (straight_run / "samples").iterdir())
    assert grids == ["step-0000002.png", "step-0000004.png"]
    saved = json.loads((straight_run / "train_config.json").read_text())
    assert saved["max_steps"] == 4 and saved["ema"] is True
    assert (straight_run / "checkpoints" / "latest").read_text().strip() == "step-4"


def test_non_finite_loss_stops_with_one_line_naming_step(vae_config, tmp_path, monkeypatch, capsys):
    real = AutoencoderLoss.generator_loss

    def poisoned(self, *args, global_step, **kwargs):  # a NaN appears at step 3, as a diverging run would
        loss, logs = real(self, *args, global_step=global_step, **kwargs)
        return (loss * float("nan") if global_step >= 3 else loss), logs
    monkeypatch.setattr(AutoencoderLoss, "generator_loss", poisoned)
    assert train_vae.main(_args(vae_config, tmp_path, "--max-steps", "6")) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    # the 4th step (global_step 3) went non-finite: "step 4", as its checkpoint would have been step-4
    assert err.startswith("error: non-finite loss") and "at step 4" in err and "step-2" in err
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step-2"
    assert not (tmp_path / "checkpoints" / "step-4").exists() and not (tmp_path / "vae").exists()


def test_ctrl_c_saves_the_finished_step(vae_config, tmp_path):
    status, stderr = interrupt_when_training([sys.executable, str(REPO / "train_vae.py"),
                                              *_args(vae_config, tmp_path, "--max-steps", "100000",
                                                     "--checkpoint-every", "100000")], cwd=REPO)
    assert status == 130 and "Traceback" not in stderr, stderr[-2000:]
    line = last_line(stderr)
    assert line.startswith("interrupted after step ") and "--resume latest" in line
    step = int(line.split()[3].rstrip(";"))
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == f"step-{step}"
    assert not (tmp_path / "vae").exists()


@pytest.mark.parametrize("bad, message", [
    (["--data", "/no/such/folder"], "neither a built-in name"),
    (["--resume", "latest"], "no checkpoint found"),
    (["--max-steps", "0"], "--max-steps must be at least 1"),
])
def test_user_mistakes_give_one_line_errors(vae_config, tmp_path, capsys, bad, message):
    assert train_vae.main(_args(vae_config, tmp_path, *bad)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and message in err[-1]


def test_unknown_preset_is_rejected(tmp_path, capsys):
    assert train_vae.main(["--data", DATA, "--output-dir", str(tmp_path), "--preset", "nope"]) == 2
    assert "invalid choice: 'nope'" in capsys.readouterr().err


@pytest.mark.slow
def test_two_cpu_processes_match_one_process_with_double_batch(vae_config, tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2` on CPU (gloo), batch 2 each == 1 process, batch 4.

    The GAN is kept off: its adaptive weight is a ratio of per-process gradient norms, so it is not split
    invariant. Attention key biases have an exactly-zero gradient (softmax ignores them), so Adam moves them
    by rounding noise alone; they are left out of the comparison.
    """
    common = ["--max-steps", "2", "--disc-start", "100"]
    result = launch_two_processes([str(REPO / "train_vae.py"), *_args(vae_config, tmp_path / "two", *common)],
                                  cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "two" / "checkpoints" / "step-2" / "random_states_1.pkl").is_file()  # 2 processes ran
    one = _args(vae_config, tmp_path / "one", *common)
    one[one.index("--batch-size") + 1] = "4"
    assert train_vae.main(one) == 0
    a, b = _weights(tmp_path / "two"), _weights(tmp_path / "one")
    compared = [k for k in a if not k.endswith("to_k.bias")]
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in compared)
    assert json.loads((tmp_path / "two" / "metrics.json").read_text())["psnr"] == pytest.approx(
        json.loads((tmp_path / "one" / "metrics.json").read_text())["psnr"], abs=1e-4)


def test_lpips_files_turn_on_the_lpips_metric(vae_config, tmp_path):
    """LPIPS weights in the two file formats load_lpips reads (random values: only the wiring is tested)."""
    from autoencoder.lpips import LPIPS

    lpips = LPIPS()
    torch.save({f"features.{k}": v for k, v in lpips.features.state_dict().items()}, tmp_path / "vgg16.pth")
    torch.save({f"lin{i}.model.1.weight": getattr(lpips, f"lin{i}").model[1].weight.abs() for i in range(5)},
               tmp_path / "heads.pth")
    out = tmp_path / "run"
    assert train_vae.main(_args(vae_config, out, "--max-steps", "1", "--val-images", "2", "--disc-start", "9",
                                "--lpips-vgg", str(tmp_path / "vgg16.pth"),
                                "--lpips-heads", str(tmp_path / "heads.pth"))) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["lpips"] > 0 and "psnr" in metrics


def test_model_without_gradients_is_not_stepped_under_a_grad_scaler(tmp_path):
    """fp16 on CUDA: accelerate's GradScaler refuses an optimizer that recorded no gradients, which stopped
    train_vae at step 1 (the discriminator has none before --disc-start). A CPU GradScaler reproduces it."""
    from accelerate.optimizer import AcceleratedOptimizer

    from ldm.training.accelerator import make_accelerator

    accelerator = make_accelerator(output_dir=tmp_path, log_with=None)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    trained, idle = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    optimizers = [AcceleratedOptimizer(torch.optim.SGD(m.parameters(), lr=0.1), scaler=scaler)
                  for m in (trained, idle)]
    x = torch.randn(4, 3)
    expected = trained.weight.detach() - 0.1 * x.sum(0).expand(2, 3)  # d(sum(Wx + b))/dW, unscaled
    idle_before = idle.weight.detach().clone()
    scaler.scale(trained(x).sum()).backward()
    train_vae.step_optimizers([(trained, optimizers[0]), (idle, optimizers[1])], accelerator)
    torch.testing.assert_close(trained.weight.detach(), expected)
    assert torch.equal(idle.weight, idle_before) and trained.weight.grad is None


def test_a_small_folder_holds_out_a_tenth_by_default_and_a_given_count_is_checked(tmp_path):
    from PIL import Image
    for index in range(30):
        Image.new("RGB", (32, 32), (8 * index, 0, 0)).save(tmp_path / f"{index:02d}.png")
        (tmp_path / f"{index:02d}.txt").write_text("a red square")
    train, val = train_vae.open_splits(str(tmp_path), resolution=32, val_images=None, seed=0)
    assert (len(train), len(val)) == (27, 3)
    assert set(train.indices).isdisjoint(val.indices)
    with pytest.raises(ValueError, match="too few to hold out 30"):
        train_vae.open_splits(str(tmp_path), resolution=32, val_images=30, seed=0)
