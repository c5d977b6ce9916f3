"""pipelines/serve/app.py through a real `ldm-serve` process: the page's event stream, queue order, cancel,
hang-ups, and the token on every route."""

import base64
import json
import threading
import time
import urllib.request

import numpy as np
import pytest
from serving import TOKEN, decode_png, pixels, shared_server


@pytest.fixture(scope="module")
def server():
    return shared_server()


def stream(server, body, events: list, stop_after=None):
    """POST /api/generate and append its events to `events` (closing early after `stop_after` events)."""
    connection = server.connection("POST", "/api/generate", body)
    response = connection.getresponse()
    assert response.status == 200
    for raw in response:
        events.append({**json.loads(raw), "time": time.monotonic()})
        if stop_after is not None and len(events) >= stop_after:
            break
    connection.close()


def test_stream_reports_place_steps_previews_then_images_and_a_seed_reproduces(server):
    events = []
    stream(server, {"prompt": "a green triangle", "steps": 12, "seed": 11, "batch_size": 2}, events)
    kinds = [e["event"] for e in events]
    assert kinds[0] == "queued" and kinds[-1] == "done" and set(kinds[1:-1]) == {"progress"}
    steps = [e["step"] for e in events if e["event"] == "progress"]
    assert steps == sorted(steps) and steps[-1] <= 12 and len(set(steps)) >= 2  # the bar moves
    previews = [e["preview"] for e in events if e["event"] == "progress" and e["preview"]]
    assert previews and all(decode_png(preview).size == (32, 32) for preview in previews)
    done = events[-1]
    assert done["seeds"] == [11, 12] and len(done["images"]) == 2
    again = []
    stream(server, {"prompt": "a green triangle", "steps": 12, "seed": 12, "batch_size": 1}, again)
    assert (
        np.abs(pixels(decode_png(again[-1]["images"][0])) - pixels(decode_png(done["images"][1]))).max() <= 1
    )


def test_waiting_clients_see_their_place_run_in_arrival_order_and_cancel_stops_a_run(server):
    logs = {name: [] for name in "abc"}
    bodies = {
        "a": {"prompt": "a red circle", "steps": 500},
        "b": {"prompt": "blue square", "steps": 3},
        "c": {"prompt": "green triangle", "steps": 3, "width": 16},  # not batchable with b: runs after it
    }
    threads = {}
    for name in "abc":
        threads[name] = threading.Thread(target=stream, args=(server, bodies[name], logs[name]))
        threads[name].start()
        deadline = time.monotonic() + 60  # submit one at a time, so arrival order is a, b, c
        while not logs[name] and time.monotonic() < deadline:
            time.sleep(0.02)
    while not any(e["event"] == "progress" for e in logs["a"]):
        time.sleep(0.02)
    assert logs["b"][0]["position"] == 1 and logs["c"][0]["position"] == 2
    job = logs["a"][0]["job"]
    assert server.request("POST", f"/api/jobs/{job}/cancel")[0] == 200
    for thread in threads.values():
        thread.join(120)
    a, b, c = (logs[name][-1] for name in "abc")
    assert a["event"] == "cancelled" and [e["step"] for e in logs["a"] if e["event"] == "progress"][-1] < 500
    assert b["event"] == c["event"] == "done" and a["time"] <= b["time"] <= c["time"]
    assert [e["position"] for e in logs["c"] if e["event"] == "queued"][-1] == 1  # moved up when a left


def test_hanging_up_a_stream_cancels_its_job(server):
    events = []
    stream(server, {"prompt": "a red circle", "steps": 500}, events, stop_after=3)
    assert events[-1]["event"] == "progress"
    deadline = time.monotonic() + 30
    while (
        server.request("GET", "/sdapi/v1/progress")[1]["state"]["job_count"] and time.monotonic() < deadline
    ):
        time.sleep(0.05)
    assert server.request("GET", "/sdapi/v1/progress")[1]["state"]["job_count"] == 0


@pytest.mark.parametrize(
    "path, method",
    [
        ("/", "GET"),
        ("/static/app.js", "GET"),
        ("/api/config", "GET"),
        ("/sdapi/v1/samplers", "GET"),
        ("/sdapi/v1/interrupt", "POST"),
        ("/sdapi/v1/txt2img", "POST"),
    ],
)
def test_every_route_needs_the_token(server, path, method):
    body = {} if method == "POST" else None
    for token in (None, "wrong"):
        status, answer = server.request(method, path, body, token=token)
        assert status == 401 and "token" in answer["detail"]
    assert server.request("GET", "/sdapi/v1/samplers")[0] == 200  # and the right one passes


def test_the_token_as_basic_auth_password_or_page_cookie(server):
    basic = base64.b64encode(f"user:{TOKEN}".encode()).decode()
    request = urllib.request.Request(
        server.url + "/sdapi/v1/sd-models", headers={"Authorization": f"Basic {basic}"}
    )
    with urllib.request.urlopen(request) as response:
        assert response.status == 200
    with urllib.request.urlopen(f"{server.url}/?token={TOKEN}") as response:
        cookie = response.headers["set-cookie"].split(";")[0]
        assert response.status == 200 and b"<title>ldm-serve</title>" in response.read()
    request = urllib.request.Request(server.url + "/api/config", headers={"Cookie": cookie})
    with urllib.request.urlopen(request) as response:
        assert json.loads(response.read())["limits"]["max_steps"] == 500
