"""The job queue: one worker thread per device runs jobs in arrival order; waiting jobs know their place.

A job cancelled while waiting leaves the queue at once (its place is freed); a running one stops at the next
sampler step. Whatever a job raises is caught, logged and recorded in the job: the worker and the server
go on.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
import uuid

from pipelines.serve.engine import GenerationRequest, Job, JobCancelled

logger = logging.getLogger("ldm-serve")

FINAL_STATES = ("done", "cancelled", "failed")


class QueueFull(Exception):
    """More jobs are waiting than the server's --max-queue allows."""


class JobQueue:
    """FIFO of jobs for one `Generator` (anything with `run(job)`), worked by one daemon thread."""

    def __init__(self, generator, *, max_waiting: int = 16):
        self.generator = generator
        self.max_waiting = max_waiting
        self.current: Job | None = None
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
            if self.current is not None:
                self.current.cancel_reason = "interrupted"
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
            candidates = [self.current, *self._waiting] if self.current is not None else list(self._waiting)
            return next((job for job in candidates if job.id == job_id), None)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def cancel(self, job: Job, reason: str = "interrupted") -> None:
        """Free a waiting job's place, or stop a running one at its next step (`reason` is recorded)."""
        with self._condition:
            if job.state in FINAL_STATES:
                return
            job.cancel_reason = reason
            if job in self._waiting:
                self._waiting.remove(job)
                self._finish(job, "cancelled")

    def wait(self, job: Job, timeout: float | None = None) -> bool:
        """Block until the job is in a final state (True) or `timeout` seconds pass (False)."""
        event = self._done_events.get(job.id)
        return True if event is None else event.wait(timeout)

    def _finish(self, job: Job, state: str) -> None:
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
                if self._stopping:
                    return
                job = self._waiting.popleft()
                job.state, job.started = "running", time.time()
                self.current = job
            state = self._run(job)
            with self._condition:
                self._finish(job, state)
                self.current = None

    def _run(self, job: Job) -> str:
        try:
            self.generator.run(job)
        except JobCancelled:
            logger.info("job %s stopped at step %d (%s)", job.id, job.step, job.cancel_reason)
            return "cancelled"
        except Exception as error:  # a failing request must never take the worker (and the server) down
            logger.exception("job %s failed", job.id)
            job.error = f"{type(error).__name__}: {error}".splitlines()[0]
            return "failed"
        return "done"
