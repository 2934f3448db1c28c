"""The step observer of a job with on_step hooks: forwards everything to the job, then calls each hook."""
from __future__ import annotations

from collections.abc import Callable, Sequence
import torch

from modules.engine.request import GenerationRequest
from modules.extensions.api import StepHook, StepState
from modules.jobs import Job

FailExtension = Callable[[str, str, BaseException], None]


class HookedObserver:
    """A StepObserver (modules.engine.progress): the job's progress, interrupt and skip, plus extension hooks.

    A hook that raises is reported through `fail` (which disables its extension) and not called again this job.
    """

    def __init__(self, job: Job, request: GenerationRequest, hooks: Sequence[tuple[str, StepHook]],
                 fail: FailExtension) -> None:
        self._job = job
        self._request = request
        self._hooks = list(hooks)
        self._fail = fail
        self._pass = (0, 1, 0)  # job_no, job_count, steps of the current sampling pass

    def begin_pass(self, *, job_no: int, job_count: int, steps: int, label: str) -> None:
        self._pass = (job_no, job_count, steps)
        self._job.begin_pass(job_no=job_no, job_count=job_count, steps=steps, label=label)

    def on_step(self, step: int, latents: torch.Tensor) -> None:
        self._job.on_step(step, latents)
        job_no, job_count, steps = self._pass
        state = StepState(request=self._request, job_no=job_no, job_count=job_count, step=step, steps=steps,
                          latents=latents, interrupt=self._job.interrupt)
        for owner, hook in list(self._hooks):
            try:
                hook(state)
            except Exception as error:
                self._hooks.remove((owner, hook))
                self._fail(owner, "on_step", error)

    def interrupted(self) -> bool:
        return self._job.interrupted()

    def skipped(self) -> bool:
        return self._job.skipped()
