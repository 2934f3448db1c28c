"""How the engine reports progress and learns about interrupt/skip, without knowing who listens."""
from __future__ import annotations

from typing import Protocol

import torch


class StepObserver(Protocol):
    """Implemented by a job (or a test). Called from the generating thread only."""

    def begin_pass(self, *, job_no: int, job_count: int, steps: int, label: str) -> None:
        """A sampling pass starts: batch `job_no` of `job_count`, `steps` denoising steps."""

    def on_step(self, step: int, latents: torch.Tensor) -> None:
        """`step` steps of the current pass are done; `latents` is read-only."""

    def interrupted(self) -> bool:
        """True once the user asked to stop the whole job (finished images are kept)."""

    def skipped(self) -> bool:
        """True if the user asked to skip the current batch; reading it clears the request."""


class NullObserver:
    """An observer that ignores everything: for scripts and tests."""

    def begin_pass(self, *, job_no: int, job_count: int, steps: int, label: str) -> None:
        pass

    def on_step(self, step: int, latents: torch.Tensor) -> None:
        pass

    def interrupted(self) -> bool:
        return False

    def skipped(self) -> bool:
        return False
