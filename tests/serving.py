"""A real `ldm-serve` process on a free localhost port over a tiny pipeline folder, for the serve tests.

`shared_server()` starts one per test process (the start costs seconds of imports) and stops it at exit.
Requests go through plain urllib / http.client, as any client's would.
"""

from __future__ import annotations

import atexit
import base64
import http.client
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tiny_components import tiny_pipeline_folder

TOKEN = "test-token"
ROOT = Path(__file__).resolve().parents[1]
SERVER_FLAGS = (
    "--max-steps",
    "500",
    "--max-images",
    "4",
    "--max-size",
    "128",
    "--max-queue",
    "4",
    "--scheduler",
    "euler-a",
)
START_TIMEOUT = 600  # seconds: a start needs ~5 s of CPU, but at nice 19 beside full-load jobs it took 170-400 s


def tiny_model_folder(root: Path) -> Path:
    return tiny_pipeline_folder(root / "pipe")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Server:
    process: subprocess.Popen
    port: int
    model: Path
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def request(self, method: str, path: str, body=None, *, token: str | None = TOKEN, timeout: float = 120):
        """(status, parsed JSON or raw text) for one request; HTTP errors are answers too."""
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                status, text = response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            status, text = error.code, error.read().decode()
        try:
            return status, json.loads(text)
        except json.JSONDecodeError:
            return status, text

    def connection(self, method: str, path: str, body) -> http.client.HTTPConnection:
        """A request sent but not read: the caller reads (or hangs up) later."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        connection.request(
            method,
            path,
            json.dumps(body),
            {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"},
        )
        return connection

    def alive(self) -> bool:
        return self.process.poll() is None and self.request("GET", "/sdapi/v1/samplers")[0] == 200

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()


def start_server(model: Path, *flags: str, token: str | None = TOKEN) -> Server:
    port = free_port()
    log = Path(tempfile.mkdtemp(prefix="ldm-serve-log-")) / "server.log"
    command = [sys.executable, "-m", "pipelines.serve", "--model", str(model), "--port", str(port), *flags]
    if token is not None:
        command += ["--api-token", token]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    with open(log, "wb") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    server = Server(process, port, model, log)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"ldm-serve exited with {process.returncode}:\n{log.read_text()}")
        try:
            if server.request("GET", "/sdapi/v1/samplers", token=token, timeout=5)[0] == 200:
                return server
        except (urllib.error.URLError, ConnectionError, socket.timeout):
            pass
        time.sleep(0.3)
    server.stop()
    raise RuntimeError(f"ldm-serve did not answer within {START_TIMEOUT} s:\n{log.read_text()}")


_SHARED: dict[str, Server] = {}


def shared_server() -> Server:
    """One server per test process, over a tiny model, with the token and small limits (SERVER_FLAGS)."""
    if "server" not in _SHARED or _SHARED["server"].process.poll() is not None:
        model = tiny_model_folder(Path(tempfile.mkdtemp(prefix="ldm-serve-model-")))
        _SHARED["server"] = start_server(model, *SERVER_FLAGS)
        atexit.register(_SHARED["server"].stop)
    return _SHARED["server"]


def in_thread(function, *args, **kwargs):
    """`function(*args, **kwargs)` on a fresh thread, as the server's worker runs the pipeline.

    On a CPU shared with other work, OpenMP's spinning barriers made pipeline calls on the main thread 10-60x
    slower than the same calls on another thread (2 cores, load 6-8); the tests' own calls go through here.
    """
    result, errors = [], []

    def run():
        try:
            result.append(function(*args, **kwargs))
        except BaseException as error:  # re-raised on the caller's thread
            errors.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return result[0]


def decode_png(text: str) -> Image.Image:
    """A base64 PNG, or a data: URL of one, as a PIL image."""
    return Image.open(io.BytesIO(base64.b64decode(text.split(",", 1)[-1])))


def encode_png(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)
