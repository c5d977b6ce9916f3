"""Progress bar (loss, samples/s) on the main process and scalar logging through accelerate's trackers."""
from __future__ import annotations

import time

from accelerate import Accelerator
from tqdm.auto import tqdm


class TrainingProgress:
    """A tqdm bar over optimizer steps `initial_step … total_steps`, shown only on the main process.

    `update(step, logs)` advances the bar to `step`, shows the loss and samples/s (global samples, all
    processes) and sends `logs` (scalar floats) plus `samples_per_s` to `accelerator.log`.
    Use as a context manager (`with TrainingProgress(...) as progress:`) so the bar is closed on errors too.
    """

    def __init__(self, accelerator: Accelerator, *, total_steps: int, initial_step: int,
                 global_batch_size: int):
        self.accelerator = accelerator
        self.global_batch_size = global_batch_size
        self.bar = tqdm(total=total_steps, initial=initial_step, desc="train", dynamic_ncols=True,
                        disable=not accelerator.is_local_main_process)
        self._last_step, self._last_time = initial_step, time.perf_counter()

    def update(self, step: int, logs: dict[str, float]) -> None:
        now = time.perf_counter()
        samples_per_s = (step - self._last_step) * self.global_batch_size / max(now - self._last_time, 1e-9)
        self._last_step, self._last_time = step, now
        self.bar.update(step - self.bar.n)
        postfix = {"loss": f"{logs['loss']:.4f}"} if "loss" in logs else {}
        self.bar.set_postfix(**postfix, samples_per_s=f"{samples_per_s:.1f}")
        self.accelerator.log({**logs, "samples_per_s": samples_per_s}, step=step)

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> "TrainingProgress":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()  # also on errors, so an `error: ...` line does not land on the bar's line
