"""pipelines/serve/jobs.py: arrival order, places, cancel; a failure leaves the worker up."""

import json
import time

import pytest
from serving import tiny_model_folder

from pipelines.folder import load_pipeline
from pipelines.serve.engine import GenerationRequest, Generator
from pipelines.serve.jobs import JobQueue, QueueFull


@pytest.fixture(scope="module")
def queue(tmp_path_factory):
    model = tiny_model_folder(tmp_path_factory.mktemp("serve-jobs"))
    pipe = load_pipeline(model)
    pipe.set_progress_bar_config(disable=True)
    queue = JobQueue(Generator(pipe, model=str(model)), max_waiting=2).start()
    yield queue
    queue.stop()


def wait_running(queue, job):
    while job.state == "queued" or job.step < 1:
        assert queue.wait(job, 0.01) is False, f"{job.state}: {job.error}"


def test_jobs_run_in_arrival_order_and_a_cancelled_waiting_job_frees_its_place(queue):
    first = queue.submit(GenerationRequest(prompt="a red circle", steps=500))
    wait_running(queue, first)
    second = queue.submit(GenerationRequest(prompt="blue square", steps=2))
    third = queue.submit(GenerationRequest(prompt="green triangle", steps=2))
    assert [queue.position(j) for j in (first, second, third)] == [0, 1, 2]
    with pytest.raises(QueueFull, match="--max-queue"):
        queue.submit(GenerationRequest(prompt="a red circle"))
    queue.cancel(second)
    assert second.state == "cancelled" and second.started is None and queue.position(third) == 1
    queue.cancel(first)
    assert queue.wait(third, 60) and third.state == "done" and len(third.images) == 1
    assert first.state == "cancelled" and first.step < 500 and first.finished <= third.started


def test_a_failing_request_is_recorded_and_the_worker_goes_on(queue):
    broken = queue.submit(GenerationRequest(prompt="a red circle", steps=2, height=30))  # not a multiple of 4
    after = queue.submit(GenerationRequest(prompt="a red circle", steps=2))
    assert (
        queue.wait(broken, 60) and broken.state == "failed" and "multiple of the VAE factor" in broken.error
    )
    assert queue.wait(after, 60) and after.state == "done" and len(after.images) == 1


def test_waiting_jobs_that_can_share_a_batch_run_together_in_arrival_order(queue):
    first = queue.submit(GenerationRequest(prompt="a red circle", steps=500))
    wait_running(queue, first)
    b = queue.submit(GenerationRequest(prompt="blue square", steps=3, seed=1))
    c = queue.submit(GenerationRequest(prompt="green triangle", steps=3, seed=2))
    queue.cancel(first)
    while b.state == "queued":  # --max-queue 2: make room
        queue.wait(b, 0.01)
    d = queue.submit(GenerationRequest(prompt="a red circle", steps=3, width=16))  # other size: its own batch
    assert all(queue.wait(job, 60) for job in (b, c, d))
    assert b.state == c.state == d.state == "done" and b.started == c.started < d.started
    assert b.seeds == [1] and c.seeds == [2] and len(b.images) == len(c.images) == 1


def test_with_a_batch_wait_requests_arriving_together_share_the_first_ones_batch(queue):
    gathering = JobQueue(queue.generator, batch_wait=5.0).start()  # long enough for any loaded machine
    try:
        jobs = [gathering.submit(GenerationRequest(prompt="a red circle", steps=2, seed=i)) for i in range(2)]
        time.sleep(0.2)  # the head waits for company: still queued, first in line
        assert jobs[0].state == "queued" and gathering.position(jobs[0]) == 1
        jobs += [gathering.submit(GenerationRequest(prompt="blue square", steps=2, seed=i)) for i in (2, 3)]
        assert all(gathering.wait(job, 60) for job in jobs)  # 4 images fill the batch: no need to wait longer
        assert len({job.started for job in jobs}) == 1 and all(job.state == "done" for job in jobs)
        assert jobs[0].started - jobs[0].created < 5.0
    finally:
        gathering.stop()


def test_a_running_job_streams_no_progress_until_the_engine_has_counted_its_steps(queue):
    """The queue marks a job running just before the engine sets its total; a poll in that gap once streamed
    "total": 1. The stream waits for the total instead."""
    import asyncio

    from pipelines.serve.app import POLL_SECONDS, job_events
    from pipelines.serve.engine import Job

    job = Job(id="gap", request=GenerationRequest(prompt="a red square", steps=5), state="running")

    async def follow():
        events, reader = [], job_events(queue, job)

        async def consume():
            async for raw in reader:
                events.append(json.loads(raw))

        task = asyncio.ensure_future(consume())
        await asyncio.sleep(5 * POLL_SECONDS)
        unplanned = list(events)
        job.total_steps, job.step, job.preview_number = 5, 1, 1  # what the engine writes once it has planned
        await asyncio.sleep(5 * POLL_SECONDS)
        job.state = "done"
        await asyncio.wait_for(task, 5)
        return unplanned, events

    unplanned, events = asyncio.run(follow())
    assert [e["event"] for e in unplanned] == ["queued"]
    progress = [e for e in events if e["event"] == "progress"]
    assert progress and {e["total"] for e in progress} == {5} and events[-1]["event"] == "done"
