"""The Registry an extension's entry point receives: it only records what the extension adds (its Contributions);
the host takes them over once the entry point returned, so an entry point that raises leaves nothing behind."""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modules.extensions.api import (
    REGISTRY_VERSION,
    TABS,
    AfterJobHook,
    AppView,
    BeforeJobHook,
    ImageSavedHook,
    Registry,
    Script,
    StepHook,
    TabBuilder,
)

if TYPE_CHECKING:
    from fastapi import APIRouter

PREFIX_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*$")
# Paths the app serves itself; an extension prefix may not equal them or lie under them.
RESERVED_PREFIXES = ("sdapi/v1", "docs", "redoc", "openapi.json", "internal", "gradio_api", "file", "assets",
                     "static", "config", "theme.css", "queue", "upload", "login", "logout", "favicon.ico")
STATIC_SUFFIXES = (".js", ".css")
SETTING_TYPES = (bool, int, float, str)
SETTING_KEY_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class RegistrationError(ValueError):
    """An extension asked for something the registry does not allow; the message says what."""


@dataclass(frozen=True)
class SettingField:
    key: str  # "<extension>.<name>"
    name: str
    default: Any
    label: str
    choices: tuple[str, ...] | None = None


@dataclass(frozen=True)
class SettingsSection:
    extension: str
    title: str
    fields: tuple[SettingField, ...]


@dataclass(frozen=True)
class TabSpec:
    extension: str
    title: str
    builder: TabBuilder


@dataclass(frozen=True)
class RouteSpec:
    extension: str
    prefix: str  # without slashes at either end
    router: APIRouter


@dataclass
class Contributions:
    """Everything one extension registered."""

    tabs: list[TabSpec] = field(default_factory=list)
    settings: list[SettingsSection] = field(default_factory=list)
    before_job: list[BeforeJobHook] = field(default_factory=list)
    on_step: list[StepHook] = field(default_factory=list)
    after_job: list[AfterJobHook] = field(default_factory=list)
    on_image_saved: list[ImageSavedHook] = field(default_factory=list)
    routes: list[RouteSpec] = field(default_factory=list)
    scripts: list[Script] = field(default_factory=list)
    static: list[Path] = field(default_factory=list)


class ExtensionRegistry(Registry):
    def __init__(self, name: str, folder: Path, app: AppView) -> None:
        self.version = REGISTRY_VERSION
        self.name = name
        self.folder = folder
        self.app = app
        self.contributions = Contributions()

    def add_tab(self, title: str, builder: TabBuilder) -> None:
        if not isinstance(title, str) or not title.strip() or not callable(builder):
            raise RegistrationError("add_tab needs a title and a builder function")
        self.contributions.tabs.append(TabSpec(self.name, title.strip(), builder))

    def add_settings(self, section: str, defaults: Any) -> Callable[[], Any]:
        fields = setting_fields(self.name, defaults)
        taken = {f.key for s in self.contributions.settings for f in s.fields}
        clashes = sorted(f.name for f in fields if f.key in taken)
        if clashes:
            raise RegistrationError(f"settings {clashes} are registered twice")
        self.contributions.settings.append(SettingsSection(self.name, str(section), fields))
        values_type = defaults if isinstance(defaults, type) else type(defaults)
        app = self.app

        def current() -> Any:
            values = {f.name: app.setting(f.key) for f in fields}
            return values_type(**values) if dataclasses.is_dataclass(values_type) else values

        return current

    def before_job(self, hook: BeforeJobHook) -> BeforeJobHook:
        self.contributions.before_job.append(_callable(hook))
        return hook

    def on_step(self, hook: StepHook) -> StepHook:
        self.contributions.on_step.append(_callable(hook))
        return hook

    def after_job(self, hook: AfterJobHook) -> AfterJobHook:
        self.contributions.after_job.append(_callable(hook))
        return hook

    def on_image_saved(self, hook: ImageSavedHook) -> ImageSavedHook:
        self.contributions.on_image_saved.append(_callable(hook))
        return hook

    def add_api_routes(self, prefix: str, router: APIRouter) -> None:
        self.contributions.routes.append(RouteSpec(self.name, checked_prefix(prefix), router))

    def add_script(self, script: Script) -> None:
        self.contributions.scripts.append(checked_script(script))

    def add_static(self, path: str | Path) -> None:
        folder = self.folder.resolve()
        resolved = (folder / path).resolve()
        if not resolved.is_relative_to(folder) or not resolved.is_file():
            raise RegistrationError(f"static file {path!s} is not a file inside the extension's folder")
        if resolved.suffix.lower() not in STATIC_SUFFIXES:
            raise RegistrationError(f"static file {path!s} must be .js or .css")
        self.contributions.static.append(resolved)


def _callable(hook: Any) -> Any:
    if not callable(hook):
        raise RegistrationError(f"a hook must be a function, got {hook!r}")
    return hook


def checked_prefix(prefix: str) -> str:
    """`/hello/` → `hello`; RegistrationError for a malformed or core prefix."""
    cleaned = str(prefix).strip().strip("/")
    if not PREFIX_PATTERN.match(cleaned) or ".." in cleaned:
        raise RegistrationError(f"API prefix {prefix!r} must be path segments of letters, digits, '.', '_' or '-'")
    lowered = cleaned.lower()
    for reserved in RESERVED_PREFIXES:
        if lowered == reserved or lowered.startswith(reserved + "/") or reserved.startswith(lowered + "/"):
            raise RegistrationError(f"API prefix {prefix!r} would take the core path /{reserved}")
    return cleaned


def checked_script(script: Any) -> Script:
    if not isinstance(script, Script):
        raise RegistrationError(f"add_script needs a Script instance, got {script!r}")
    title = getattr(script, "title", None)
    if not isinstance(title, str) or not title.strip() or title.strip().lower() == "none":
        raise RegistrationError(f"script {type(script).__name__} needs a title (not 'None')")
    unknown = [tab for tab in script.show_for if tab not in TABS]
    if unknown or not script.show_for:
        raise RegistrationError(f"script {title!r}: show_for must name some of {', '.join(TABS)}, "
                                f"got {script.show_for}")
    if not script.always_on and type(script).run is Script.run:
        raise RegistrationError(f"script {title!r} is selectable but does not define run()")
    return script


def setting_fields(extension: str, defaults: Any) -> tuple[SettingField, ...]:
    """The typed fields of a dataclass (type or instance) or a dict of defaults, keyed "<extension>.<name>"."""
    if dataclasses.is_dataclass(defaults):
        instance = defaults() if isinstance(defaults, type) else defaults
        items = [(f.name, getattr(instance, f.name), f.metadata) for f in dataclasses.fields(instance)]
    elif isinstance(defaults, Mapping):
        items = [(name, value, {}) for name, value in defaults.items()]
    else:
        raise RegistrationError("add_settings needs a dataclass or a dict of defaults")
    result = []
    for name, value, metadata in items:
        if not isinstance(name, str) or not SETTING_KEY_PATTERN.match(name):
            raise RegistrationError(f"setting name {name!r} must be a Python identifier")
        if type(value) not in SETTING_TYPES:
            raise RegistrationError(f"setting {name!r}: default must be bool, int, float or str, got {value!r}")
        choices = metadata.get("choices")
        result.append(SettingField(f"{extension}.{name}", name, value,
                                   metadata.get("label") or name.replace("_", " ").capitalize(),
                                   tuple(choices) if choices else None))
    if not result:
        raise RegistrationError("add_settings needs at least one setting")
    return tuple(result)
