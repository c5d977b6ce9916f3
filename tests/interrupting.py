"""Run a command in a subprocess, press Ctrl-C once its training progress bar is up, collect stderr.

As in a terminal, SIGINT goes to the command's whole process group (a quickstart and the stage it runs)."""
import os
import signal
import subprocess
import threading
import time


def interrupt_when_training(argv: list[str], *, cwd, timeout: float = 180.0) -> tuple[int, str]:
    """(exit status, stderr) of `argv` sent one SIGINT after "train:" (the progress bar, which the trainers
    open inside their interrupt handler) first shows on its stderr (the process group's, shared by children)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               start_new_session=True)
    received = bytearray()

    def read() -> None:
        while chunk := os.read(process.stderr.fileno(), 4096):
            received.extend(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout
    while b"train:" not in received and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGINT)
    try:
        status = process.wait(timeout=timeout)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    reader.join(timeout=10)
    return status, received.decode(errors="replace")


def last_line(stderr: str) -> str:
    """The last non-empty line, progress-bar carriage returns counted as line breaks."""
    return [line for line in stderr.replace("\r", "\n").splitlines() if line.strip()][-1]
