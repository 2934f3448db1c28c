"""example-hello: the worked example of docs/extensions.md, using every kind of registration.

- settings "Hello" (greeting text, whether to add it to the infotext)
- before_job: adds `Greeting: <greeting>` to every image's infotext
- on_step / after_job / on_image_saved: counts steps, jobs and saved files
- a "Hello" tab showing the counts, GET /hello/status, and the script "Hello seeds"
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import APIRouter

from modules.extensions.api import (
    AppView,
    GenerationRequest,
    GenerationResult,
    Registry,
    Script,
    ScriptArg,
    ScriptContext,
    StepState,
    combine_results,
)


@dataclass
class HelloSettings:
    greeting: str = field(default="Hello", metadata={"label": "Greeting added to the infotext"})
    add_to_infotext: bool = field(default=True, metadata={"label": "Add the greeting to every image's infotext"})


class Counts:
    """What the hooks saw since start-up (hooks run on the generation thread, the tab and route elsewhere)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.steps = self.jobs = self.saved = 0
        self.last_saved: str = ""

    def add(self, *, steps: int = 0, jobs: int = 0, saved: Path | None = None) -> None:
        with self._lock:
            self.steps, self.jobs = self.steps + steps, self.jobs + jobs
            if saved is not None:
                self.saved, self.last_saved = self.saved + 1, saved.name

    def as_dict(self) -> dict[str, int | str]:
        with self._lock:
            return {"steps": self.steps, "jobs": self.jobs, "saved": self.saved, "last_saved": self.last_saved}


class HelloSeeds(Script):
    """Runs the request once per seed (seed, seed + 1, ...) and shows a labelled grid of the results."""

    title = "Hello seeds"
    args = (ScriptArg("Images", 2, minimum=1, maximum=8, step=1),)

    def run(self, ctx: ScriptContext, request: GenerationRequest, args: list) -> GenerationResult:
        (count,) = args  # parse_args (the default) checked it against the ScriptArg and filled the default
        ctx.set_job_count(count)
        first_seed = request.seed if request.seed >= 0 else 1000
        results = []
        for index in range(count):
            if ctx.interrupted():
                break
            results.append(ctx.run(request.replace(seed=first_seed + index, n_iter=1, batch_size=1)))
        images = [image for result in results for image in result.images]
        if not images:
            return combine_results(results)
        grid = ctx.make_grid(images, rows=1, column_labels=[f"seed {first_seed + i}" for i in range(len(images))])
        ctx.save_image(grid, results[0].first_infotext, grid=True)
        return combine_results(results, grid=grid)


def build_tab(app: AppView, counts: Counts, settings) -> None:
    import gradio as gr  # the UI is only built when the web UI runs (not with --nowebui)

    greeting = gr.Markdown(f"{settings().greeting}!", elem_id="example_hello_greeting")
    status = gr.JSON(counts.as_dict(), label="Seen since start-up")
    refresh = gr.Button("Refresh", elem_id="example_hello_refresh")
    refresh.click(lambda: (f"{settings().greeting}!", counts.as_dict()), outputs=[greeting, status])


def build_router(counts: Counts, settings) -> APIRouter:
    router = APIRouter(tags=["example-hello"])

    @router.get("/status")
    def status() -> dict:
        return {"greeting": settings().greeting, **counts.as_dict()}

    return router


def register(registry: Registry) -> None:
    counts = Counts()
    settings = registry.add_settings("Hello (example extension)", HelloSettings)

    @registry.before_job
    def add_greeting(request: GenerationRequest) -> GenerationRequest | None:
        current = settings()
        if not current.add_to_infotext:
            return None  # unchanged
        return request.replace(extra_params={**request.extra_params, "Greeting": current.greeting})

    @registry.on_step
    def count_step(state: StepState) -> None:
        counts.add(steps=1)

    @registry.after_job
    def count_job(result: GenerationResult) -> None:
        counts.add(jobs=1)

    @registry.on_image_saved
    def count_saved(path: Path, infotext: str) -> None:
        counts.add(saved=path)

    registry.add_tab("Hello", lambda app: build_tab(app, counts, settings))
    registry.add_api_routes("hello", build_router(counts, settings))
    registry.add_script(HelloSeeds())
    registry.add_static("hello.css")
