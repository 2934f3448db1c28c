"""The job queue: one worker thread per device runs generation jobs in arrival order.

A Job is also the engine's StepObserver: the worker passes it into the engine, which reports steps to it
and polls it for interrupt/skip once per step.
"""
from __future__ import annotations

import enum
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from modules.engine.request import GenerationRequest

log = logging.getLogger(__name__)

PreviewDecoder = Callable[[torch.Tensor], Image.Image]


class JobState(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"  # dropped from the queue by an interrupt before it started


class JobFailed(RuntimeError):
    """The job raised; the message is the user-facing reason."""


@dataclass(frozen=True)
class ProgressSnapshot:
    """A consistent view of a job's progress (what /sdapi/v1/progress and the UI show)."""

    state: JobState
    job_no: int
    job_count: int
    step: int
    steps: int
    fraction: float
    eta_seconds: float
    textinfo: str
    preview: Image.Image | None
    preview_id: int
    interrupted: bool
    skipped: bool


class Job:
    """One queued request. Thread-safe: the worker updates it, request handlers read and cancel it."""

    def __init__(
        self, request: GenerationRequest, task_id: str | None = None, action: Callable[[], Any] | None = None,
        *, series: tuple[int, int] = (0, 1),
    ) -> None:
        self.id = task_id or uuid.uuid4().hex
        self.request = request
        self.action = action  # set for maintenance work (a model switch) that must not overlap generation
        self.series = series  # (index, count): job `index` of a script's `count` jobs (X/Y/Z cells)
        self.state = JobState.QUEUED
        self.result: Any = None
        self.error: str | None = None
        self.created = time.time()
        self.started: float | None = None
        self.preview_every = 0  # 0 = no live preview
        self.preview_decoder: PreviewDecoder | None = None
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._interrupt = threading.Event()
        self._skip = threading.Event()
        self._job_no, self._job_count, self._step, self._steps = 0, 1, 0, 0
        self._textinfo = "Waiting..."
        self._preview: Image.Image | None = None
        self._preview_id = 0

    # --- user actions -------------------------------------------------------------------------------------
    def interrupt(self) -> None:
        self._interrupt.set()

    def skip(self) -> None:
        self._skip.set()

    def wait(self, timeout: float | None = None) -> Any:
        """Block until the job ends; return its result (None if it was cancelled before starting) or raise JobFailed."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"job {self.id} did not finish within {timeout} s")
        if self.state is JobState.FAILED:
            raise JobFailed(self.error or "generation failed")
        return self.result

    @property
    def done(self) -> bool:
        return self._done.is_set()

    # --- StepObserver -------------------------------------------------------------------------------------
    def begin_pass(self, *, job_no: int, job_count: int, steps: int, label: str) -> None:
        index, count = self.series  # a script's jobs: the progress counts the passes of all of them
        with self._lock:
            self._job_no, self._job_count = index * job_count + job_no, count * job_count
            self._step, self._steps = 0, steps
            self._textinfo = label

    def on_step(self, step: int, latents: torch.Tensor) -> None:
        with self._lock:
            self._step = step
        if self.preview_decoder is not None and self.preview_every and step % self.preview_every == 0:
            try:
                image = self.preview_decoder(latents[:1])
            except Exception:  # a broken preview must never break generation
                log.exception("live preview failed")
                return
            with self._lock:
                self._preview, self._preview_id = image, self._preview_id + 1

    def interrupted(self) -> bool:
        return self._interrupt.is_set()

    def skipped(self) -> bool:
        if self._skip.is_set():
            self._skip.clear()
            return True
        return False

    # --- reading --------------------------------------------------------------------------------------------
    def snapshot(self) -> ProgressSnapshot:
        with self._lock:
            steps = max(self._steps, 1)
            # A1111: (finished batches + fraction of this one) / batches
            fraction = min((self._job_no + self._step / steps) / max(self._job_count, 1), 1.0)
            if self.state is JobState.DONE:
                fraction = 1.0
            elapsed = time.time() - self.started if self.started else 0.0
            eta = elapsed / fraction - elapsed if fraction > 0 else 0.0
            return ProgressSnapshot(
                state=self.state, job_no=self._job_no, job_count=self._job_count, step=self._step,
                steps=self._steps, fraction=fraction, eta_seconds=max(eta, 0.0), textinfo=self._textinfo,
                preview=self._preview, preview_id=self._preview_id,
                interrupted=self._interrupt.is_set(), skipped=self._skip.is_set(),
            )

    def _finish(self, state: JobState, result: Any = None, error: str | None = None) -> None:
        self.state, self.result, self.error = state, result, error
        self._done.set()


class JobQueue:
    """Runs jobs one at a time on a single worker thread (one generation per device)."""

    def __init__(self, runner: Callable[[Job], Any], *, history: int = 32) -> None:
        self._runner = runner
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._lock = threading.Lock()
        self._current: Job | None = None
        self._recent: dict[str, Job] = {}
        self._history = history
        self._worker = threading.Thread(target=self._work, name="generation-worker", daemon=True)
        self._worker.start()

    def submit(self, request: GenerationRequest, task_id: str | None = None, *,
               series: tuple[int, int] = (0, 1)) -> Job:
        job = Job(request, task_id, series=series)
        with self._lock:
            self._remember(job)
        self._queue.put(job)
        return job

    def run(self, request: GenerationRequest, timeout: float | None = None) -> Any:
        """Submit and wait: the synchronous path the API uses."""
        return self.submit(request).wait(timeout)

    @property
    def current(self) -> Job | None:
        return self._current

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    def get(self, task_id: str) -> Job | None:
        with self._lock:
            return self._recent.get(task_id)

    def interrupt(self) -> None:
        """Stop the running job (it keeps what it finished) and drop every queued one."""
        self._drain_queued()
        job = self._current
        if job is not None:
            job.interrupt()

    def skip(self) -> None:
        job = self._current
        if job is not None:
            job.skip()

    def run_exclusive(self, action: Callable[[], Any], timeout: float | None = None) -> Any:
        """Run `action` on the worker thread between jobs (model switches must not race generation)."""
        job = Job(GenerationRequest(), action=action)
        self._queue.put(job)
        return job.wait(timeout)

    def shutdown(self) -> None:
        self._queue.put(None)

    def _drain_queued(self) -> None:
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            if job is None:
                self._queue.put(None)
                return
            job._finish(JobState.CANCELLED)

    def _remember(self, job: Job) -> None:
        self._recent[job.id] = job
        while len(self._recent) > self._history:
            self._recent.pop(next(iter(self._recent)))

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            self._current = job
            job.state, job.started = JobState.RUNNING, time.time()
            try:
                result = job.action() if job.action is not None else self._runner(job)
                job._finish(JobState.DONE, result)
            except Exception as error:  # the worker must survive any job
                log.exception("job %s failed", job.id)
                job._finish(JobState.FAILED, error=f"{type(error).__name__}: {error}")
            finally:
                self._current = None
                job.preview_decoder = None  # a model's bound method: kept, it keeps evicted checkpoints in RAM
