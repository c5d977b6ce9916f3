"""The job queue: one worker thread per device runs jobs in arrival order; waiting jobs know their place.

A job cancelled while waiting leaves the queue at once (its place is freed); a running one stops at the next
sampler step. Jobs at the head of the queue that can share a batch (`engine.batchable`, up to the generator's
batch size in images) run together in one pipeline call, each image from its own seed, as `ldm-generate` batches
its images. Whatever a job raises is caught, logged and recorded in the job: the worker and the server go on.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
import uuid

from pipelines.serve.engine import GenerationRequest, Job, batchable

logger = logging.getLogger("ldm-serve")

FINAL_STATES = ("done", "cancelled", "failed")


class QueueFull(Exception):
    """More jobs are waiting than the server's --max-queue allows."""


class JobQueue:
    """FIFO of jobs for one `Generator` (`run(jobs, on_cancel)`, `batch_size`), worked by one daemon thread."""

    def __init__(self, generator, *, max_waiting: int = 16, batch_wait: float = 0.0):
        """batch_wait: seconds the head job may wait for requests to share its batch (0: start at once)."""
        self.generator = generator
        self.max_waiting = max_waiting
        self.batch_wait = batch_wait
        self.running: list[Job] = []
        self._waiting: collections.deque[Job] = collections.deque()
        self._condition = threading.Condition()
        self._done_events: dict[str, threading.Event] = {}
        self._stopping = False
        self._thread = threading.Thread(target=self._work, name="ldm-serve-worker", daemon=True)

    def start(self) -> "JobQueue":
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel everything and let the worker finish its step and exit."""
        with self._condition:
            self._stopping = True
            for job in list(self._waiting):
                self._finish(job, "cancelled")
            self._waiting.clear()
            for job in self.running:
                job.cancel_reason = "interrupted"
            self._condition.notify_all()
        self._thread.join(timeout)

    def submit(self, request: GenerationRequest) -> Job:
        """Queue a request; raise QueueFull when --max-queue jobs already wait."""
        job = Job(id=uuid.uuid4().hex[:12], request=request, created=time.time())
        with self._condition:
            if len(self._waiting) >= self.max_waiting:
                raise QueueFull(
                    f"{len(self._waiting)} requests are already waiting (the server's --max-queue); "
                    "try again later."
                )
            self._done_events[job.id] = threading.Event()
            self._waiting.append(job)
            self._condition.notify_all()
        return job

    @property
    def current(self) -> Job | None:
        """The first running job (AUTOMATIC1111's "current job"), or None."""
        running = self.running
        return running[0] if running else None

    def position(self, job: Job) -> int:
        """0 while the job runs (or has finished), k while k - 1 jobs wait between it and the running one."""
        with self._condition:
            try:
                return self._waiting.index(job) + 1
            except ValueError:
                return 0

    def find(self, job_id: str) -> Job | None:
        """The running or a waiting job with this id (None once it has finished)."""
        with self._condition:
            return next((job for job in [*self.running, *self._waiting] if job.id == job_id), None)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def job_count(self) -> int:
        """Jobs running or waiting."""
        return len(self.running) + len(self._waiting)

    def cancel(self, job: Job, reason: str = "interrupted") -> None:
        """Free a waiting job's place, or stop a running one at its next step (`reason` is recorded)."""
        with self._condition:
            if job.state in FINAL_STATES:
                return
            job.cancel_reason = reason
            if job in self._waiting:
                self._waiting.remove(job)
                self._finish(job, "cancelled")
                self._condition.notify_all()

    def wait(self, job: Job, timeout: float | None = None) -> bool:
        """Block until the job is in a final state (True) or `timeout` seconds pass (False)."""
        event = self._done_events.get(job.id)
        return True if event is None else event.wait(timeout)

    def _finish(self, job: Job, state: str) -> None:
        if state == "done" and job.cancel_reason is not None:
            state = "cancelled"
            logger.info("job %s stopped at step %d (%s)", job.id, job.step, job.cancel_reason)
        job.state = state
        job.finished = time.time()
        event = self._done_events.pop(job.id, None)
        if event is not None:
            event.set()

    def _work(self) -> None:
        while True:
            with self._condition:
                while not self._waiting and not self._stopping:
                    self._condition.wait()
                if self.batch_wait > 0:
                    self._gather()
                if self._stopping:
                    return
                if not self._waiting:  # the head was cancelled while it gathered
                    continue
                group = self._take_group()
                started = time.time()
                for job in group:
                    job.state, job.started = "running", started
                self.running = group
            state = self._run(group)
            with self._condition:
                for job in group:
                    if job.state == "running":
                        self._finish(job, state)
                self.running = []

    def _gather(self) -> None:
        """Wait up to `batch_wait` for requests arriving together to fill the head's batch (lock held)."""
        deadline = time.monotonic() + self.batch_wait
        while self._waiting and not self._stopping and self._room_behind_head():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._condition.wait(left)  # submit() and cancel() wake us

    def _room_behind_head(self) -> bool:
        """Whether a request arriving now could still join the head's batch (lock held)."""
        head = self._waiting[0].request
        images = 0
        for job in self._waiting:
            if not batchable(head, job.request):
                return False  # only the jobs right behind the head join it
            images += job.request.num_images
        return images < self.generator.batch_size

    def _take_group(self) -> list[Job]:
        """The head job, with the jobs right behind it that can share its batch (caller holds the lock)."""
        group = [self._waiting.popleft()]
        images = group[0].request.num_images
        while self._waiting and batchable(group[0].request, self._waiting[0].request):
            images += self._waiting[0].request.num_images
            if images > self.generator.batch_size:
                break
            group.append(self._waiting.popleft())
        return group

    def _cancel_running(self, job: Job) -> None:
        """A job dropped from a batch that goes on: answer its client now."""
        with self._condition:
            if job.state == "running":
                self._finish(job, "cancelled")

    def _run(self, group: list[Job]) -> str:
        """Run a group; return the state for its jobs still running: "done", or "failed" for all on an error
        (a cancelled job's state is "cancelled" whatever this returns, see `_finish`)."""
        try:
            self.generator.run(group, on_cancel=self._cancel_running)
        except Exception as error:  # a failing request must never take the worker (and the server) down
            logger.exception("jobs %s failed", ", ".join(job.id for job in group))
            for job in group:
                job.error = f"{type(error).__name__}: {error}".splitlines()[0]
            return "failed"
        return "done"
