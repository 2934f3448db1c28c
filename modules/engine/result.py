"""What a finished generation returns to the UI, the API and scripts."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from modules.engine.request import GenerationRequest


@dataclass
class GenerationResult:
    request: GenerationRequest  # as run: seed resolved, sampler canonical
    images: list[Image.Image]
    infotexts: list[str]
    seeds: list[int]
    subseeds: list[int]
    prompts: list[str]
    negative_prompts: list[str]
    grid: Image.Image | None = None
    saved_paths: list[Path] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)  # A1111's `info` object (JSON-serialisable)
    warnings: list[str] = field(default_factory=list)
    interrupted: bool = False
    detected_maps: list[Image.Image | None] = field(default_factory=list)  # per ControlNet unit (None: skipped)

    @property
    def first_infotext(self) -> str:
        return self.infotexts[0] if self.infotexts else ""
