"""ldm/training/guards.py: the non-finite-loss guard."""
import pytest
import torch

from ldm.training import NonFiniteLossError, check_finite


def test_finite_loss_passes():
    check_finite(torch.tensor(1.5), 3, last_checkpoint=None)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_loss_names_step_and_checkpoint_in_one_line(bad, tmp_path):
    with pytest.raises(NonFiniteLossError) as info:
        check_finite(torch.tensor([0.1, bad]), 17, last_checkpoint=tmp_path / "step-10")
    message = str(info.value)
    assert "step 17" in message and "step-10" in message and "\n" not in message
