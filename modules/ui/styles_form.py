"""The styles picker and editor of the generation tabs, without gradio: what each button does to styles.csv and
to the prompt boxes. Tests call these directly; modules/ui/styles.py only lays out and wires components.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from modules.styles import (
    PromptStyle,
    apply_styles,
    delete_style,
    extract_styles,
    read_styles,
    save_style,
)

if TYPE_CHECKING:
    from modules.app import App


@dataclass(frozen=True)
class EditorValues:
    """What the editor shows: the style being edited (its stored name) and its three fields."""

    selected: str
    name: str
    prompt: str
    negative_prompt: str


def style_names(app: App) -> list[str]:
    return [style.name for style in read_styles(app.paths.styles_file)]


def selected_names(value: Any) -> list[str]:
    """The dropdown's value (None, one name or a list) as a list of names."""
    if not value:
        return []
    return [value] if isinstance(value, str) else [str(name) for name in value]


def styled_values(app: App, values: Mapping[str, Any]) -> dict[str, Any]:
    """Form values with the selected styles applied to both prompts (at Generate, as A1111 does);
    unknown names raise UnknownStyleError (a ValueError the tabs show as an error)."""
    names = selected_names(values.get("styles"))
    if not names:
        return dict(values)
    prompt, negative = apply_styles(str(values.get("prompt") or ""), str(values.get("negative_prompt") or ""),
                                    names, read_styles(app.paths.styles_file))
    return {**values, "prompt": prompt, "negative_prompt": negative, "styles": names}


def apply_to_prompts(app: App, prompt: str, negative_prompt: str, names: Any) -> tuple[str, str]:
    """The "apply selected styles to the prompts" button: the boxes get the styled text (and the selection is
    cleared by the caller, so the styles are not applied twice)."""
    return apply_styles(prompt or "", negative_prompt or "", selected_names(names), read_styles(app.paths.styles_file))


def pasted_styles(app: App, prompt: str, negative_prompt: str) -> tuple[list[str], str, str]:
    """Pasting an infotext: styles whose text the prompts carry go back into the dropdown (A1111 "Apply if any")."""
    return extract_styles(prompt or "", negative_prompt or "", read_styles(app.paths.styles_file))


def editor_values(app: App, name: str | None) -> EditorValues:
    """The editor's fields for a stored style; an unknown or empty name gives an empty editor for a new one."""
    for style in read_styles(app.paths.styles_file):
        if style.name == name:
            return EditorValues(style.name, style.name, style.prompt, style.negative_prompt)
    return EditorValues("", (name or "").strip(), "", "")


def save_from_editor(app: App, values: EditorValues) -> list[str]:
    """Save (new, overwrite or rename from `selected`); StyleEditError for an empty or taken name."""
    style = PromptStyle(values.name, values.prompt or "", values.negative_prompt or "")
    saved = save_style(app.paths.styles_file, style, replaces=values.selected or None)
    return [style.name for style in saved]


def delete_from_editor(app: App, name: str) -> list[str]:
    return [style.name for style in delete_style(app.paths.styles_file, name)]
