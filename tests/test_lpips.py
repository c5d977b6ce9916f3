"""autoencoder/lpips.py: file round trips in both formats, an independent functional reference, axioms."""
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from autoencoder.lpips import load_lpips

CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)  # torchvision vgg16().features conv positions
POOL_AFTER = (2, 7, 14, 21)  # a 2x2 max-pool follows these convs
TAP_AFTER = (2, 7, 14, 21, 28)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3


def _random_weights(seed=0):
    """A torchvision-format VGG16 state dict (with classifier keys, as the real file) and LPIPS v0.1 heads."""
    generator = torch.Generator().manual_seed(seed)
    vgg, channels = {}, 3
    for index, width in zip(CONV_INDICES, (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)):
        fan_in = channels * 9
        weight = torch.randn(width, channels, 3, 3, generator=generator) * (2 / fan_in) ** 0.5
        vgg[f"features.{index}.weight"] = weight
        vgg[f"features.{index}.bias"] = torch.randn(width, generator=generator) * 0.01
        channels = width
    vgg["classifier.0.weight"] = torch.randn(4, 8, generator=generator)
    heads = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1, generator=generator)
             for i, c in enumerate((64, 128, 256, 512, 512))}
    return vgg, heads


def _reference_distance(vgg, heads, x, y):
    """LPIPS straight from the state dicts with functional ops, apart from the module's nn.Sequential."""
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)

    def taps(h):
        out = []
        h = (h - shift) / scale
        for index in CONV_INDICES:
            h = F.relu(F.conv2d(h, vgg[f"features.{index}.weight"], vgg[f"features.{index}.bias"], padding=1))
            if index in TAP_AFTER:
                out.append(h / (h.norm(dim=1, keepdim=True) + 1e-10))
            if index in POOL_AFTER:
                h = F.max_pool2d(h, 2)
        return out

    total = torch.zeros(x.shape[0])
    for i, (a, b) in enumerate(zip(taps(x), taps(y))):
        weight = heads[f"lin{i}.model.1.weight"].view(1, -1, 1, 1)
        total = total + ((a - b) ** 2 * weight).sum(dim=1).mean(dim=(1, 2))
    return total


@pytest.fixture(scope="module")
def weights():
    return _random_weights()


@pytest.fixture(scope="module")
def folder(weights, tmp_path_factory):
    """The random weights written once in both formats: vgg16.{pth,safetensors}, heads.{pth,safetensors}."""
    folder = tmp_path_factory.mktemp("lpips")
    vgg, heads = weights
    torch.save(vgg, folder / "vgg16.pth")
    torch.save(heads, folder / "heads.pth")
    save_file(vgg, folder / "vgg16.safetensors")
    save_file(heads, folder / "heads.safetensors")
    return folder


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_round_trip_matches_functional_reference(folder, weights, fmt):
    vgg, heads = weights
    lpips = load_lpips(folder / f"vgg16.{fmt}", folder / f"heads.{fmt}")
    for key, value in lpips.state_dict().items():
        torch.testing.assert_close(value, (vgg if key.startswith("features") else heads)[key], rtol=0, atol=0)
    x, y = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        distance = lpips(x, y)
    assert distance.shape == (2,)
    torch.testing.assert_close(distance, _reference_distance(vgg, heads, x, y), rtol=1e-4, atol=1e-6)


@pytest.fixture(scope="module")
def lpips_model(folder):
    return load_lpips(folder / "vgg16.pth", folder / "heads.safetensors")


def test_identity_symmetry_and_gradient_to_the_input(lpips_model):
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    y = (x + 0.3 * torch.randn_like(x)).clamp(-1, 1).requires_grad_(True)
    assert torch.equal(lpips_model(x, x), torch.zeros(2))
    torch.testing.assert_close(lpips_model(x, y), lpips_model(y, x))
    lpips_model(x, y).sum().backward()
    assert y.grad.abs().sum() > 0 and torch.isfinite(y.grad).all()
    assert all(not p.requires_grad and p.grad is None for p in lpips_model.parameters())


def test_stays_in_eval_mode_inside_a_training_parent(lpips_model):
    parent = torch.nn.ModuleDict({"lpips": lpips_model}).train()
    assert not lpips_model.training  # the heads' dropout would make the loss random
    x, y = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    torch.testing.assert_close(parent["lpips"](x, y), lpips_model(x, y))


def test_missing_or_wrong_files(tmp_path, folder):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_lpips(tmp_path / "vgg16.pth", folder / "heads.pth")
    with pytest.raises(FileNotFoundError, match="not found"):
        load_lpips(folder / "vgg16.pth", tmp_path / "heads.pth")
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "wrong.pth")
    with pytest.raises(ValueError, match="features"):
        load_lpips(tmp_path / "wrong.pth", folder / "heads.pth")
    with pytest.raises(ValueError, match="lin0"):
        load_lpips(folder / "vgg16.pth", tmp_path / "wrong.pth")
