"""autoencoder/discriminator.py: PatchGAN output size and receptive field against conv arithmetic, init."""
import torch

from autoencoder.discriminator import PatchDiscriminator


def _conv_out(size: int, stride: int) -> int:
    return (size + 2 * 1 - 4) // stride + 1  # 4x4 kernels, padding 1


def test_output_is_one_logit_per_patch():
    size = 32
    for n_layers in (1, 2, 3):
        expected = size
        for stride in [2] * n_layers + [1, 1]:  # n_layers stride-2 convs (the first included), two stride-1
            expected = _conv_out(expected, stride)
        logits = PatchDiscriminator(base_channels=8, n_layers=n_layers)(torch.randn(2, 3, size, size))
        assert logits.shape == (2, 1, expected, expected)


def test_receptive_field_is_70_pixels_for_three_layers():
    # pix2pix's "70x70 PatchGAN": the gradient of one central logit reaches exactly a 70x70 input window.
    model = PatchDiscriminator(base_channels=4, n_layers=3).eval()  # eval: BatchNorm must not mix positions
    images = torch.randn(1, 3, 160, 160, requires_grad=True)
    logits = model(images)
    centre = logits.shape[-1] // 2
    logits[0, 0, centre, centre].backward()
    rows = images.grad[0].abs().sum(dim=(0, 2)).nonzero()
    cols = images.grad[0].abs().sum(dim=(0, 1)).nonzero()
    assert int(rows.max() - rows.min()) + 1 == 70
    assert int(cols.max() - cols.min()) + 1 == 70


def test_weights_follow_pix2pix_init():
    model = PatchDiscriminator(base_channels=64, n_layers=3)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    weights = torch.cat([c.weight.flatten() for c in convs])
    assert abs(weights.mean().item()) < 1e-3 and abs(weights.std().item() - 0.02) < 1e-3
    scales = torch.cat([n.weight for n in norms])
    assert abs(scales.mean().item() - 1.0) < 0.01 and abs(scales.std().item() - 0.02) < 0.005
    assert all(c.bias is None or not c.bias.any() for c in convs)
    assert len(norms) == 3  # no normalisation on the first and the last conv
