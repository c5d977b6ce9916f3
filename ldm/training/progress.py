"""Progress on the main process (a tqdm bar on a terminal, plain lines in a log file) and scalar logging
through accelerate's trackers."""
from __future__ import annotations

import sys
import time
from typing import TextIO

from accelerate import Accelerator
from tqdm.auto import tqdm

PLAIN_EVERY_S = 10.0  # seconds between progress lines off a terminal (nohup, a cluster's job log)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class TrainingProgress:
    """Progress over optimizer steps `initial_step … total_steps`, shown only on the main process.

    On a terminal: a tqdm bar with the loss and samples/s. Off one (`stream.isatty()` false): tqdm's
    carriage-return stream would fill a log file with every redraw (727 KB in 74 lines for one quickstart), so
    it writes one plain line when training starts and then every `plain_every_s` seconds and at the last step:
    `train: step S/T (P%), loss L, N samples/s, elapsed m:ss, ETA m:ss` (elapsed: since this run's first step).
    `update(step, logs)` also sends `logs` (scalar floats) plus `samples_per_s` (global samples, all processes)
    to `accelerator.log`. Use as a context manager so the bar is closed on errors too.
    """

    def __init__(self, accelerator: Accelerator, *, total_steps: int, initial_step: int,
                 global_batch_size: int, stream: TextIO | None = None, plain_every_s: float = PLAIN_EVERY_S):
        self.accelerator = accelerator
        self.global_batch_size, self.total_steps = global_batch_size, total_steps
        self.stream = stream if stream is not None else sys.stderr
        shown = accelerator.is_local_main_process
        self.plain = shown and not self.stream.isatty()
        self.plain_every_s = plain_every_s
        self.bar = tqdm(total=total_steps, initial=initial_step, desc="train", dynamic_ncols=True,
                        disable=not shown or self.plain, file=self.stream)
        self._last_step, self._last_time = initial_step, time.perf_counter()
        self._start_step, self._start_time = initial_step, self._last_time
        self._line_step, self._line_time = initial_step, self._last_time
        if self.plain:
            self._write(f"train: starting at step {initial_step} of {total_steps}")

    def _write(self, line: str) -> None:
        self.stream.write(line + "\n")
        self.stream.flush()

    def update(self, step: int, logs: dict[str, float]) -> None:
        now = time.perf_counter()
        samples_per_s = (step - self._last_step) * self.global_batch_size / max(now - self._last_time, 1e-9)
        self._last_step, self._last_time = step, now
        if self.plain:
            self._plain_line(step, now, logs)
        else:
            self.bar.update(step - self.bar.n)
            postfix = {"loss": f"{logs['loss']:.4f}"} if "loss" in logs else {}
            self.bar.set_postfix(**postfix, samples_per_s=f"{samples_per_s:.1f}")
        self.accelerator.log({**logs, "samples_per_s": samples_per_s}, step=step)

    def _plain_line(self, step: int, now: float, logs: dict[str, float]) -> None:
        if now - self._line_time < self.plain_every_s and step < self.total_steps:
            return
        rate = (step - self._line_step) * self.global_batch_size / max(now - self._line_time, 1e-9)
        seconds_per_step = (now - self._start_time) / max(step - self._start_step, 1)
        eta = _duration((self.total_steps - step) * seconds_per_step)
        loss = f", loss {logs['loss']:.4f}" if "loss" in logs else ""
        self._write(f"train: step {step}/{self.total_steps} ({100 * step / self.total_steps:.0f}%){loss}, "
                    f"{rate:.1f} samples/s, elapsed {_duration(now - self._start_time)}, ETA {eta}")
        self._line_step, self._line_time = step, now

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> "TrainingProgress":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()  # also on errors, so an `error: ...` line does not land on the bar's line
