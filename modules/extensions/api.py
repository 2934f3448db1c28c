"""The public, versioned surface of the extension registry: the only module an extension imports from the app.

REGISTRY_VERSION 1. Anything an extension can reach is named here; a change that breaks an extension written against
this file needs a new version (additions keep the version). An extension's manifest names the version it needs.

A selectable script in ~25 lines (it shows in the "Script" dropdown of txt2img and img2img, and answers
`script_name: "seed sweep"` with `script_args: [4]` over the API):

    from modules.extensions.api import Registry, Script, ScriptArg, combine_results

    class SeedSweep(Script):
        title = "Seed sweep"
        args = (ScriptArg("Images", 4, minimum=1, maximum=16, step=1),)

        def run(self, ctx, request, args):
            (count,) = args                      # parse_args checked the range and filled the default
            ctx.set_job_count(count)             # the progress bar covers every job
            base = request.seed if request.seed >= 0 else 1234
            results = [ctx.run(request.replace(seed=base + index)) for index in range(count)
                       if not ctx.interrupted()]
            images = [image for result in results for image in result.images]
            grid = ctx.make_grid(images)
            ctx.save_image(grid, results[0].first_infotext, grid=True)
            return combine_results(results, grid=grid)   # what the gallery / API response shows

    def register(registry: Registry) -> None:   # the manifest's entry point, e.g. "sweep:register"
        registry.add_script(SeedSweep())

Threads: run() and hooks run off the UI thread; run() may block on ctx.run(). Hooks run on the generation worker.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from PIL import Image

from modules.engine.request import GenerationRequest, RequestError
from modules.engine.result import GenerationResult

if TYPE_CHECKING:
    import torch
    from fastapi import APIRouter
    from gradio.components import Component

    from modules.settings import Settings

REGISTRY_VERSION = 1
SUPPORTED_REGISTRY_VERSIONS: tuple[int, ...] = (1,)  # manifests asking for another version are not loaded
TXT2IMG, IMG2IMG = "txt2img", "img2img"
TABS: tuple[str, ...] = (TXT2IMG, IMG2IMG)

__all__ = [
    "REGISTRY_VERSION", "SUPPORTED_REGISTRY_VERSIONS", "TXT2IMG", "IMG2IMG", "TABS", "GenerationRequest",
    "GenerationResult", "RequestError", "ScriptArg", "Script", "ScriptUiContext", "ScriptContext", "AppView",
    "StepState", "Registry", "BeforeJobHook", "StepHook", "AfterJobHook", "ImageSavedHook", "TabBuilder",
    "combine_results",
]


# ------------------------------------------------------------------------------------------- script arguments


@dataclass(frozen=True)
class ScriptArg:
    """One positional argument of a script: /script-info lists it, the default UI builds an input for it, and the
    default `Script.parse_args` checks values against it.

    The kind follows `value`: bool → checkbox; int/float → slider (with minimum and maximum) or number;
    str → textbox (`lines` > 1: multi-line), or dropdown with `choices`; list → checkbox group over `choices`.
    """

    label: str
    value: Any = None  # the default
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    choices: tuple[str, ...] | None = None
    lines: int = 1

    def check(self, value: Any) -> Any:
        """`value` in this argument's kind (an int stays an int; JSON's 8.0 becomes 8); RequestError if invalid."""
        default = self.value
        if value is None:
            return default
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise RequestError(f"{self.label} must be true or false, got {value!r}")
            return value
        if isinstance(default, (int, float)):
            return self._number(value, whole=isinstance(default, int))
        if isinstance(default, (list, tuple)):
            items = [value] if isinstance(value, str) else value
            if not isinstance(items, (list, tuple)) or not all(isinstance(item, str) for item in items):
                raise RequestError(f"{self.label} must be a list of strings, got {value!r}")
            return [self._choice(item) for item in items]
        if not isinstance(value, str):
            raise RequestError(f"{self.label} must be a string, got {value!r}")
        return self._choice(value) if self.choices else value

    def _number(self, value: Any, *, whole: bool) -> int | float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise RequestError(f"{self.label} must be a number, got {value!r}")
        if whole and not float(value).is_integer():
            raise RequestError(f"{self.label} must be a whole number, got {value!r}")
        if (self.minimum is not None and value < self.minimum) or (self.maximum is not None and value > self.maximum):
            raise RequestError(f"{self.label} must be between {self.minimum} and {self.maximum}, got {value!r}")
        return int(value) if whole else float(value)

    def _choice(self, value: str) -> str:
        if self.choices is None:
            return value
        for choice in self.choices:  # A1111 matches labels exactly; we also accept another case
            if choice.lower() == value.strip().lower():
                return choice
        raise RequestError(f"{self.label} must be one of {', '.join(self.choices)}, got {value!r}")


def check_positional(title: str, args: Sequence[ScriptArg], values: Sequence[Any]) -> list[Any]:
    """A1111 script_args: positional; missing trailing values (or None) keep the defaults; more is an error."""
    if len(values) > len(args):
        raise RequestError(f"{title} takes {len(args)} script_args ({', '.join(a.label for a in args)}), "
                           f"got {len(values)}")
    padded = list(values) + [None] * (len(args) - len(values))
    return [arg.check(value) for arg, value in zip(args, padded)]


# ------------------------------------------------------------------------------------------------- contexts


class AppView(ABC):
    """A read-only look at the app: settings and the names of installed models (for choices and validation)."""

    @property
    @abstractmethod
    def settings(self) -> Settings:
        """The current settings (A1111 names); a snapshot: never modify it."""

    @abstractmethod
    def setting(self, key: str) -> Any:
        """One setting: an A1111 name (`"samples_format"`) or an extension's `"<extension>.<key>"`."""

    @abstractmethod
    def checkpoint_titles(self) -> list[str]:
        """Installed checkpoints, as the checkpoint dropdown lists them (`name [hash]`)."""

    @abstractmethod
    def find_checkpoint(self, name: str) -> str:
        """The title of the checkpoint `name` identifies (name, title, hash); RequestError when none does."""

    @abstractmethod
    def vae_names(self) -> list[str]:
        """"Automatic", "None", then each VAE file."""

    @abstractmethod
    def sampler_names(self) -> list[str]:
        """Sampler display names (A1111's)."""

    @abstractmethod
    def scheduler_names(self) -> list[str]:
        """Schedule type labels ("Automatic", "Karras", ...)."""

    @abstractmethod
    def upscaler_names(self) -> list[str]:
        """Hires fix upscalers: latent modes, then pixel upscalers."""


class ScriptUiContext(ABC):
    """What `Script.ui` gets: the tab it is built in and a maker of the default inputs for ScriptArgs."""

    tab: str  # TXT2IMG or IMG2IMG
    elem_prefix: str  # unique per tab and script: prefix your elem_ids with it
    app: AppView

    @abstractmethod
    def components_for(self, args: Sequence[ScriptArg]) -> list[Component]:
        """One gradio input per ScriptArg, in order (what `Script.ui` builds by default)."""


class ScriptContext(ABC):
    """What `Script.run` gets: the app's queue, progress over all its jobs, interrupt, saving and grids."""

    tab: str  # TXT2IMG or IMG2IMG: where the script was started
    app: AppView

    @abstractmethod
    def run(self, request: GenerationRequest) -> GenerationResult:
        """Run one job through the app's queue and wait for it (images saved as usual when the request says so).

        After an interrupt the result has `interrupted=True` (and maybe no images); later calls return at once.
        A failing job raises (the script fails with its message). Validates the request first (RequestError).
        """

    @abstractmethod
    def set_job_count(self, count: int) -> None:
        """How many ctx.run calls this run will make, so the progress bar covers them all (default: 1)."""

    @abstractmethod
    def interrupted(self) -> bool:
        """True once the user pressed Interrupt: stop submitting and return what you have."""

    @abstractmethod
    def save_image(self, image: Image.Image, infotext: str, *, grid: bool = False, seed: int | None = None,
                   suffix: str = "") -> Path | None:
        """Save like a job's outputs: outputs/<txt2img|img2img>-images (grid=True: -grids), the usual numbering,
        format and infotext chunk. None when the settings or the request turn saving off."""

    @abstractmethod
    def make_grid(self, images: Sequence[Image.Image], *, rows: int | None = None,
                  column_labels: Sequence[str] | None = None, row_labels: Sequence[str] | None = None) -> Image.Image:
        """Images in a grid (A1111's row count by default); with labels, a header row / column of text."""


@dataclass(frozen=True)
class StepState:
    """What an on_step hook sees after each denoising step. `latents` is the live tensor: read it, never change it
    (clone() what you keep). Call `request_interrupt()` to stop the job (finished images are kept)."""

    request: GenerationRequest
    job_no: int  # sampling pass within the job (batch, then hires)
    job_count: int
    step: int  # steps done in this pass
    steps: int
    latents: torch.Tensor
    interrupt: Callable[[], None] = field(repr=False, compare=False)

    def request_interrupt(self) -> None:
        self.interrupt()


# ------------------------------------------------------------------------------------------------- scripts


ScriptArgs = TypeVar("ScriptArgs")


class Script(ABC):
    """A script: selectable (the "Script" dropdown, API `script_name`) or always-on (API `alwayson_scripts`).

    Values of the inputs `ui()` returns arrive in `parse_args` positionally, exactly as the API's `script_args`
    (or `alwayson_scripts[name]["args"]`) do, so the UI and the API share one path:
        values → parse_args (ValueError → HTTP 422 / UI error) → validate(request, args) → run / process.
    """

    title: ClassVar[str]  # dropdown label; the API name is title.lower() (matched in any case)
    show_for: ClassVar[tuple[str, ...]] = TABS  # tabs it appears in (TXT2IMG, IMG2IMG)
    always_on: ClassVar[bool] = False
    args: ClassVar[tuple[ScriptArg, ...]] = ()  # positional arguments (listed by /script-info)

    @property
    def name(self) -> str:
        """The API name: the lower-case title (A1111 lists and matches scripts so)."""
        return self.title.lower()

    def ui(self, ctx: ScriptUiContext) -> list[Component]:
        """Build the inputs inside the script's own group; their values go to parse_args in this order."""
        return ctx.components_for(self.args)

    def parse_args(self, values: Sequence[Any], app: AppView) -> Any:
        """Positional values (UI or API) → this script's args; raise ValueError for invalid ones.

        Default: checked against `args` (defaults for missing trailing values) and returned as a list.
        """
        return check_positional(self.title, self.args, values)

    def validate(self, request: GenerationRequest, args: Any, app: AppView) -> None:
        """Called before run/process on the caller's thread: raise ValueError for a combination that cannot run."""

    def run(self, ctx: ScriptContext, request: GenerationRequest, args: Any) -> GenerationResult:
        """Selectable scripts: turn the request into jobs (ctx.run) and return what the gallery / API shows."""
        raise NotImplementedError(f"script {self.title!r} is always-on; it has no run()")

    def process(self, request: GenerationRequest, args: Any) -> GenerationRequest:
        """Always-on scripts: the request to run instead (use request.replace; never modify it in place)."""
        return request


def combine_results(results: Sequence[GenerationResult], *, grid: Image.Image | None = None) -> GenerationResult:
    """One result holding every image of `results` in order (request and info of the first), `grid` shown first."""
    if not results:
        raise ValueError("combine_results needs at least one result")
    first = results[0]
    combined = GenerationResult(request=first.request, images=[], infotexts=[], seeds=[], subseeds=[], prompts=[],
                                negative_prompts=[], grid=grid, info=dict(first.info))
    for result in results:
        combined.images += result.images
        combined.infotexts += result.infotexts
        combined.seeds += result.seeds
        combined.subseeds += result.subseeds
        combined.prompts += result.prompts
        combined.negative_prompts += result.negative_prompts
        combined.saved_paths += result.saved_paths
        combined.warnings += result.warnings
        combined.interrupted = combined.interrupted or result.interrupted
    combined.info["infotexts"] = list(combined.infotexts)
    combined.info["all_seeds"] = list(combined.seeds)
    return combined


# ---------------------------------------------------------------------------------------------- the registry


BeforeJobHook = Callable[[GenerationRequest], "GenerationRequest | None"]  # None = unchanged
StepHook = Callable[[StepState], None]
AfterJobHook = Callable[[GenerationResult], None]  # may change result.images in place: they are saved afterwards
ImageSavedHook = Callable[[Path, str], None]  # (path written, its infotext)
TabBuilder = Callable[[AppView], None]  # builds gradio components inside the (already open) tab
Hook = TypeVar("Hook", bound=Callable[..., Any])
SettingsValues = TypeVar("SettingsValues")


class Registry(ABC):
    """What an extension's entry point receives. Everything it registers is dropped if the entry point raises.

    Hook order for one job: before_job (extensions in load order) → on_step after every step → after_job →
    on_image_saved for each file written. A hook that raises disables its extension (error in the Extensions tab
    and the log); the job goes on without it.
    """

    version: int  # REGISTRY_VERSION of the running app
    name: str  # the extension's name (its manifest's)
    folder: Path
    app: AppView

    @abstractmethod
    def add_tab(self, title: str, builder: TabBuilder) -> None:
        """A top-level UI tab; `builder(app)` creates its components (and wires their events) inside it."""

    @abstractmethod
    def add_settings(self, section: str, defaults: type[SettingsValues] | SettingsValues | Mapping[str, Any]
                     ) -> Callable[[], SettingsValues | dict[str, Any]]:
        """A settings section (shown in Settings, saved in config.yaml as "<extension>.<key>").

        `defaults`: a dataclass (type or instance; field metadata "label" / "choices" are used) or a dict of typed
        defaults (bool, int, float, str). Returns a function giving the current values (a dataclass instance of
        the same type, or a dict).
        """

    @abstractmethod
    def before_job(self, hook: BeforeJobHook) -> BeforeJobHook:
        """Before each job: return a changed request (request.replace(...)) or None. Usable as a decorator."""

    @abstractmethod
    def on_step(self, hook: StepHook) -> StepHook:
        """After each denoising step, on the generation thread: keep it fast."""

    @abstractmethod
    def after_job(self, hook: AfterJobHook) -> AfterJobHook:
        """After each job, before its images are saved."""

    @abstractmethod
    def on_image_saved(self, hook: ImageSavedHook) -> ImageSavedHook:
        """After each image (or grid) file is written."""

    @abstractmethod
    def add_api_routes(self, prefix: str, router: APIRouter) -> None:
        """Mount a FastAPI router under `/<prefix>` (one or more path segments, e.g. "hello" or "sdapi/hello");
        core paths (`/sdapi/v1`, `/docs`, the UI's) cannot be taken. --api-auth protects these routes too."""

    @abstractmethod
    def add_script(self, script: Script) -> None:
        """A selectable or always-on script (titles are unique across the app)."""

    @abstractmethod
    def add_static(self, path: str | Path) -> None:
        """A .js or .css file (relative to the extension's folder) added to every page of the UI."""
