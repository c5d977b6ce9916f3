"""Run a command under `accelerate launch` as 2 CPU processes (gloo), the way every multi-process test does."""
import contextlib
import os
import subprocess
import sys
from pathlib import Path

import torch

TWO_CPU_PROCESSES = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                     "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]


def launch_two_processes(program: list[str], *, cwd=None, timeout: float = 600) -> subprocess.CompletedProcess:
    """`program` (a script path or `-m module`, then its arguments) on 2 CPU processes, one thread each, offline;
    stdout and stderr captured as text. The caller asserts on the return code."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([*TWO_CPU_PROCESSES, *program], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


@contextlib.contextmanager
def one_thread():
    """Run the 1-process reference on one thread, as each launched process runs: CPU kernels may sum in
    another order on two threads (a pixel 1/255 apart on an AMD EPYC), and a byte comparison must not see that."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def assert_same_files(one: Path, two: Path, *, except_names: tuple[str, ...] = ()) -> None:
    """The two folders hold the same file names and, but for `except_names`, the same bytes."""
    assert sorted(p.name for p in one.iterdir()) == sorted(p.name for p in two.iterdir())
    for path in one.iterdir():
        if path.name not in except_names:
            assert path.read_bytes() == (two / path.name).read_bytes(), path.name
