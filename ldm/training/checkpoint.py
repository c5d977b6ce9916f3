"""Atomic training checkpoints: `OUT/checkpoints/step-{N}/` folders plus a `latest` pointer file.

A save writes `accelerator.save_state` into a temporary folder, renames it into place, and only then
replaces `latest` (written to a temporary file and `os.replace`d), so a crash at any point of a save leaves
`latest` naming the previous complete checkpoint. Register every extra stateful object (EMA, LR scheduler,
models not passed to `accelerator.prepare`) with `accelerator.register_for_checkpointing` before saving or
loading.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from accelerate import Accelerator

logger = logging.getLogger(__name__)

LATEST = "latest"
STATE_FILE = "trainer_state.json"  # {"step": N}: the optimizer steps completed when the state was saved


class CheckpointManager:
    """Save, find and load checkpoints under `output_dir/checkpoints`, keeping the newest `keep_last`."""

    def __init__(self, output_dir: Path | str, keep_last: int = 2):
        if keep_last < 1:
            raise ValueError(f"keep_last must be at least 1, got {keep_last}.")
        self.root = Path(output_dir) / "checkpoints"
        self.keep_last = keep_last
        self.last_saved: Path | None = None  # for error messages: the newest complete checkpoint of this run

    def save(self, accelerator: Accelerator, step: int) -> Path:
        """Write the full training state after `step` optimizer steps; return `checkpoints/step-{step}`.

        Every process must call this (each saves its own RNG state); the main process does the renames.
        """
        final = self.root / f"step-{step}"
        tmp = self.root / f".tmp-step-{step}"
        if accelerator.is_main_process:
            self.root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)  # leftovers of a save that crashed earlier
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            (tmp / STATE_FILE).write_text(json.dumps({"step": step}))
            if final.exists():  # re-saving the same step after a resume
                shutil.rmtree(final)
            os.replace(tmp, final)
            self._point_latest_at(final)
            self._prune()
            logger.info("saved checkpoint %s", final)
        accelerator.wait_for_everyone()
        self.last_saved = final
        return final

    def ensure_saved(self, accelerator: Accelerator, step: int) -> Path:
        """The checkpoint of `step`: the one this run just saved, or a new one (`save`)."""
        if self.last_saved == self.root / f"step-{step}":
            return self.last_saved
        return self.save(accelerator, step)

    def _point_latest_at(self, folder: Path) -> None:
        pointer_tmp = self.root / f".{LATEST}.tmp"
        pointer_tmp.write_text(folder.name + "\n")
        os.replace(pointer_tmp, self.root / LATEST)  # atomic on POSIX and Windows

    def _prune(self) -> None:
        """Delete all but the newest `keep_last` complete checkpoints (never the one `latest` names)."""
        latest = self.root / (self.root / LATEST).read_text().strip()
        folders = sorted(self.root.glob("step-*"), key=_step_of)
        for folder in folders[:-self.keep_last]:
            if folder != latest:
                shutil.rmtree(folder, ignore_errors=True)

    def resolve(self, resume: str) -> Path:
        """The checkpoint folder named by `resume`: "latest" (the pointer file) or a step folder's path."""
        if resume == LATEST:
            pointer = self.root / LATEST
            if not pointer.is_file():
                raise FileNotFoundError(f"--resume latest: no checkpoint found in {self.root}.")
            path = self.root / pointer.read_text().strip()
        else:
            path = Path(resume)
        if not (path / STATE_FILE).is_file():
            raise FileNotFoundError(f"--resume: {path} is not a complete checkpoint (no {STATE_FILE}).")
        return path

    def load(self, accelerator: Accelerator, path: Path | str) -> int:
        """Restore the state saved in `path`; return the number of optimizer steps it had completed."""
        path = Path(path)
        accelerator.load_state(str(path))
        self.last_saved = path
        step = int(json.loads((path / STATE_FILE).read_text())["step"])
        logger.info("resumed from %s at step %d", path, step)
        return step


def _step_of(folder: Path) -> int:
    return int(folder.name.split("-", 1)[1])
