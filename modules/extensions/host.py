"""The ExtensionHost (`app.extensions`): loads each extension in isolation, keeps what it registered, and is what the
app calls — hooks around every job, scripts for the UI and the API, tabs, routes, static files and settings.

Isolation: an extension whose manifest is invalid, whose registry version is not supported, whose requirements are
missing or whose import / entry point raises is recorded with the reason and not loaded; a hook or script that
raises disables its extension (reason shown in the Extensions tab and logged) and the job goes on without it.
Scripts the app registers itself (`add_core_script`) are not isolated: their errors are the job's.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modules.engine.request import GenerationRequest, RequestError
from modules.engine.result import GenerationResult
from modules.extensions import loader, state
from modules.extensions.api import SUPPORTED_REGISTRY_VERSIONS, Script
from modules.extensions.gitinfo import GitInfo, read_git_info
from modules.extensions.manifest import Manifest, ManifestError, read_manifest
from modules.extensions.observer import HookedObserver
from modules.extensions.registry import (Contributions, ExtensionRegistry, RegistrationError, RouteSpec,
                                         SettingsSection, TabSpec, checked_script)
from modules.extensions.runtime import LiveAppView, ScriptJob
from modules.jobs import Job

if TYPE_CHECKING:
    from modules.app import App

log = logging.getLogger(__name__)

CORE = "core"  # owner of the scripts the app registers itself
NO_SCRIPT = "None"  # the Script dropdown's "no script" entry


@dataclass
class ExtensionRecord:
    """One folder of extensions/: what it is, whether the user wants it on, and why it is not running if it isn't."""

    name: str
    folder: Path
    builtin: bool  # shipped in the project's extensions/ folder
    manifest: Manifest | None = None
    enabled: bool = True  # the user's choice (or the manifest's default)
    loaded: bool = False  # its entry point ran at start-up: its tabs and routes exist
    problem: str = ""  # why it is not running (load error, version, requirements, a hook that raised)
    git: GitInfo = field(default_factory=GitInfo)
    contributions: Contributions = field(default_factory=Contributions)

    @property
    def active(self) -> bool:
        return self.enabled and self.loaded and not self.problem

    @property
    def status(self) -> str:
        if not self.enabled:
            return "disabled"
        if self.problem:
            return "failed"
        return "enabled" if self.loaded else "restart to load"


class ExtensionHost:
    def __init__(self, app: App, roots: Sequence[Path], state_file: Path, *, builtin_root: Path | None = None) -> None:
        self._app = app
        self.roots = tuple(roots)
        self.builtin_root = builtin_root.resolve() if builtin_root else None
        self.state_file = state_file
        self.view = LiveAppView(app)
        self._lock = threading.RLock()
        self._records: dict[str, ExtensionRecord] = {}
        self._core_scripts: list[Script] = []

    # ------------------------------------------------------------------------------------------------ loading

    def add_core_script(self, script: Script) -> None:
        """A script that is part of the app (not isolated: its errors are the request's or the job's)."""
        checked_script(script)
        with self._lock:
            self._claim_titles([script], owner=CORE)
            self._core_scripts.append(script)

    def load(self) -> None:
        """Discover every extension folder and load the enabled ones, each on its own; never raises."""
        choices = state.read_choices(self.state_file)
        for folder in loader.discover(self.roots):
            record = self._load_folder(folder, choices)
            with self._lock:
                self._records[record.name] = record
            if record.problem:
                log.error("extension %s not loaded: %s", record.name, record.problem)

    def _load_folder(self, folder: Path, choices: Mapping[str, bool]) -> ExtensionRecord:
        # shipped with the project (an extension the user cloned into the same folder has its own .git)
        builtin = (self.builtin_root is not None and folder.resolve().parent == self.builtin_root
                   and not (folder / ".git").exists())
        record = ExtensionRecord(name=folder.name, folder=folder, builtin=builtin, git=read_git_info(folder))
        try:
            manifest = read_manifest(folder)
        except ManifestError as error:
            record.problem = f"invalid manifest: {error}"
            return record
        record.name, record.manifest = manifest.name, manifest
        record.enabled = choices.get(manifest.name, manifest.enabled_by_default)
        if manifest.name in self._records:
            record.name = f"{manifest.name} ({folder})"
            record.problem = f"another extension is already named {manifest.name!r}"
        elif manifest.registry_version not in SUPPORTED_REGISTRY_VERSIONS:
            record.problem = (f"written for registry version {manifest.registry_version}; this app supports "
                              f"{', '.join(map(str, SUPPORTED_REGISTRY_VERSIONS))} (update the extension)")
        elif missing := loader.missing_requirements(manifest.requirements):
            record.problem = f"missing requirements: {', '.join(missing)} (pip install them, then restart)"
        elif record.enabled:
            self._run_entry_point(record, manifest, folder)
        return record

    def _run_entry_point(self, record: ExtensionRecord, manifest: Manifest, folder: Path) -> None:
        registry = ExtensionRegistry(manifest.name, folder, self.view)
        try:
            loader.import_entry_point(manifest, folder)(registry)
            with self._lock:
                self._commit(manifest.name, registry.contributions)
        except (Exception, SystemExit) as error:  # anything an extension does at import must not stop start-up
            log.exception("extension %s failed to load", manifest.name)
            record.problem = f"failed to load: {type(error).__name__}: {error}"
            return
        record.contributions, record.loaded = registry.contributions, True

    def _commit(self, owner: str, contributions: Contributions) -> None:
        """Take over what an entry point registered: titles must be free, settings are registered with the app."""
        self._claim_titles(contributions.scripts, owner=owner)
        defaults = {f.key: f.default for section in contributions.settings for f in section.fields}
        if defaults:
            self._app.add_extension_settings(defaults)

    def _claim_titles(self, scripts: Sequence[Script], *, owner: str) -> None:
        taken = {script.name: name for name, script in self._all_scripts()}
        for script in scripts:
            if script.name in taken:
                raise RegistrationError(f"script title {script.title!r} is already used by {taken[script.name]}")
            taken[script.name] = owner

    # ------------------------------------------------------------------------------------------------ records

    def records(self) -> list[ExtensionRecord]:
        with self._lock:
            return list(self._records.values())

    def record(self, name: str) -> ExtensionRecord:
        with self._lock:
            if name not in self._records:
                raise KeyError(f"no extension named {name!r}")
            return self._records[name]

    def set_enabled(self, name: str, enabled: bool) -> ExtensionRecord:
        """The user's choice, saved; hooks and scripts follow at once, tabs and routes after a restart."""
        with self._lock:
            record = self.record(name)
            record.enabled = enabled
            if enabled and record.loaded:
                record.problem = ""  # a hook failure is forgiven: the user turned it back on
            choices = state.read_choices(self.state_file)
            choices[record.name] = enabled
            state.write_choices(self.state_file, choices)
            return record

    def fail(self, owner: str, where: str, error: BaseException) -> None:
        """Disable an extension whose hook or script raised; the job goes on."""
        log.error("extension %s disabled: %s raised %s: %s", owner, where, type(error).__name__, error,
                  exc_info=error)
        with self._lock:
            record = self._records.get(owner)
            if record is not None:
                record.problem = f"{where} raised {type(error).__name__}: {error}"

    def _active(self) -> list[ExtensionRecord]:
        with self._lock:
            return [record for record in self._records.values() if record.active]

    # ---------------------------------------------------------------------------------------- UI and server

    def tabs(self) -> list[TabSpec]:
        return [tab for record in self._active() for tab in record.contributions.tabs]

    def routes(self) -> list[RouteSpec]:
        return [route for record in self._active() for route in record.contributions.routes]

    def static_files(self, suffix: str) -> list[Path]:
        return [path for record in self._active() for path in record.contributions.static if path.suffix == suffix]

    def page_head(self) -> str:
        """<script> tags of the enabled extensions' .js files, for the page head."""
        scripts = (path.read_text(encoding="utf-8") for path in self.static_files(".js"))
        return "".join(f"<script>\n{script}\n</script>\n" for script in scripts)

    def settings_sections(self) -> list[SettingsSection]:
        return [section for record in self._active() for section in record.contributions.settings]

    # -------------------------------------------------------------------------------------------------- hooks

    def _hooks(self, kind: str) -> Iterator[tuple[str, Callable[..., Any]]]:
        for record in self._active():
            for hook in getattr(record.contributions, kind):
                yield record.name, hook

    def before_job(self, request: GenerationRequest) -> GenerationRequest:
        """Each extension's before_job hooks in load order; a hook's request must still be valid."""
        request = request.replace(extra_params=dict(request.extra_params), extension_args=dict(request.extension_args))
        for owner, hook in self._hooks("before_job"):
            try:
                changed = hook(request)
                if changed is not None:
                    if not isinstance(changed, GenerationRequest):
                        raise TypeError(f"before_job returned {type(changed).__name__}, not a GenerationRequest")
                    changed.validate()
                    request = changed
            except Exception as error:
                self.fail(owner, "before_job", error)
        return request

    def step_observer(self, job: Job, request: GenerationRequest) -> Any:
        """The job itself, or (with on_step hooks) an observer that also calls them after every step."""
        hooks = list(self._hooks("on_step"))
        return HookedObserver(job, request, hooks, self.fail) if hooks else job

    def after_job(self, result: GenerationResult) -> None:
        for owner, hook in self._hooks("after_job"):
            try:
                hook(result)
            except Exception as error:
                self.fail(owner, "after_job", error)

    def image_saved(self, path: Path, infotext: str) -> None:
        for owner, hook in self._hooks("on_image_saved"):
            try:
                hook(path, infotext)
            except Exception as error:
                self.fail(owner, "on_image_saved", error)

    # ------------------------------------------------------------------------------------------------ scripts

    def _all_scripts(self) -> list[tuple[str, Script]]:
        core = [(CORE, script) for script in self._core_scripts]
        return core + [(record.name, script) for record in self._records.values() if record.loaded
                       for script in record.contributions.scripts]

    def scripts(self, tab: str | None = None, *, always_on: bool | None = None) -> list[Script]:
        """Scripts that can run now (core first, then extensions in load order), optionally of one tab / kind."""
        with self._lock:
            active = {CORE} | {record.name for record in self._records.values() if record.active}
            listed = [script for owner, script in self._all_scripts() if owner in active]
        return [script for script in listed if (tab is None or tab in script.show_for)
                and (always_on is None or script.always_on == always_on)]

    def owner_of(self, script: Script) -> str:
        with self._lock:
            return next((owner for owner, candidate in self._all_scripts() if candidate is script), CORE)

    def find_script(self, name: str, tab: str, *, always_on: bool = False) -> Script:
        """The script called `name` (any case) in `tab`; RequestError listing what exists."""
        candidates = self.scripts(tab, always_on=always_on)
        for script in candidates:
            if script.name == name.strip().lower():
                return script
        kind = "always-on script" if always_on else "script"
        listed = ", ".join(script.title for script in candidates) or "none"
        raise RequestError(f"{kind} {name!r} not found for {tab}; available: {listed}")

    def _isolated(self, script: Script, where: str, call: Callable[[], Any]) -> Any:
        """Run an extension script's method: ValueError is the caller's (422), anything else disables it."""
        try:
            return call()
        except ValueError:
            raise
        except Exception as error:
            owner = self.owner_of(script)
            if owner == CORE:
                raise
            self.fail(owner, f"script {script.title!r} {where}", error)
            raise RequestError(f"script {script.title!r} failed and was disabled: {error}") from error

    def prepare(self, script: Script, values: Sequence[Any], request: GenerationRequest) -> Any:
        """parse_args then validate, on the caller's thread (errors before anything is queued)."""
        args = self._isolated(script, "parse_args", lambda: script.parse_args(list(values), self.view))
        self._isolated(script, "validate", lambda: script.validate(request, args, self.view))
        return args

    def apply_alwayson(self, request: GenerationRequest, given: Mapping[str, Any], tab: str) -> GenerationRequest:
        """API `alwayson_scripts` ({title: {"args": [...]}}): each script's args (→ extension_args[name]), then
        its process(). Unknown names raise RequestError (HTTP 422), as A1111 does."""
        for name, payload in given.items():
            script = self.find_script(name, tab, always_on=True)
            values = payload.get("args", []) if isinstance(payload, Mapping) else payload
            if not isinstance(values, (list, tuple)):
                raise RequestError(f"alwayson_scripts.{name}.args must be a list, got {values!r}")
            args = self.prepare(script, values, request)
            request = request.replace(extension_args={**request.extension_args, script.name: args})
            request = self._isolated(script, "process", lambda: script.process(request, args)) or request
        return request

    def submit(self, request: GenerationRequest, tab: str, *, script_name: str | None = None,
               script_args: Sequence[Any] = (), task_id: str | None = None) -> Job:
        """Queue the request, or start the named selectable script on it ("None" / empty: no script)."""
        if not script_name or script_name.strip() in ("", NO_SCRIPT):
            return self._app.submit(request, task_id)
        script = self.find_script(script_name, tab)
        args = self.prepare(script, script_args, request)
        return ScriptJob(self._app, script, request, args, tab, task_id, on_error=self._script_failed).start()

    def _script_failed(self, script: Script, error: Exception) -> None:
        owner = self.owner_of(script)
        if owner != CORE and not isinstance(error, ValueError):
            self.fail(owner, f"script {script.title!r} run", error)
