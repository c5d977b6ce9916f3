"""ldm/training/progress.py: plain progress lines off a terminal (no carriage returns), a tqdm bar on one."""
import io
import re

import pytest
from accelerate import Accelerator

from ldm.training.progress import TrainingProgress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(scope="module")
def accelerator():
    return Accelerator(cpu=True)


def test_off_a_terminal_each_line_is_plain_and_says_step_loss_rate_and_eta(accelerator):
    stream = io.StringIO()
    with TrainingProgress(accelerator, total_steps=10, initial_step=2, global_batch_size=8, stream=stream,
                          plain_every_s=0.0) as progress:
        for step in range(3, 11):
            progress.update(step, {"loss": 1.0 / step})
    text = stream.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert lines[0] == "train: starting at step 2 of 10" and len(lines) == 9
    pattern = re.compile(r"train: step (\d+)/10 \((\d+)%\), loss ([\d.]+), ([\d.]+) samples/s, "
                         r"elapsed (\d+):(\d\d), ETA (\d+):(\d\d)")
    for step, line in zip(range(3, 11), lines[1:]):
        match = pattern.fullmatch(line)
        assert match, line
        assert int(match[1]) == step and int(match[2]) == round(10 * step) and float(match[3]) == round(1 / step, 4)
    assert lines[-1].endswith("ETA 0:00")


def test_lines_are_spaced_in_time_but_the_last_step_is_always_written(accelerator):
    stream = io.StringIO()
    with TrainingProgress(accelerator, total_steps=50, initial_step=0, global_batch_size=1, stream=stream,
                          plain_every_s=3600.0) as progress:
        for step in range(1, 51):
            progress.update(step, {"loss": 0.5})
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2 and lines[1].startswith("train: step 50/50 (100%), loss 0.5000")


def test_on_a_terminal_it_is_the_tqdm_bar(accelerator):
    stream = Terminal()
    with TrainingProgress(accelerator, total_steps=5, initial_step=0, global_batch_size=4, stream=stream) as p:
        for step in range(1, 6):
            p.update(step, {"loss": 0.25})
    text = stream.getvalue()
    assert "\r" in text and "train:" in text and "loss=0.2500" in text and "ETA" not in text
