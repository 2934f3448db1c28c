"""The "Script" dropdown of txt2img / img2img with each selectable script's own inputs (shown while it is
selected), and the inputs of always-on scripts (in accordions). Values go through modules/ui/scripts_form.py.

An extension's `ui()` that raises disables the extension (its group is left out); the rest of the tab builds.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import gradio as gr

from modules.extensions.api import AppView, Script, ScriptArg, ScriptUiContext
from modules.extensions.host import CORE, NO_SCRIPT
from modules.ui.forms import NamedComponents
from modules.ui.scripts_form import SCRIPT_FIELD, arg_field, scripted_submit

if TYPE_CHECKING:
    from modules.app import App

__all__ = ["ScriptControls", "build_script_controls", "wire_script_controls", "scripted_submit", "arg_component"]


@dataclass
class ScriptControls:
    dropdown: gr.Dropdown
    groups: dict[str, gr.Group] = field(default_factory=dict)  # script title → its inputs


def arg_component(arg: ScriptArg, elem_id: str) -> gr.components.Component:
    """The default input for a ScriptArg (see ScriptArg's docstring for the kinds)."""
    value = arg.value
    if arg.choices is not None and isinstance(value, (list, tuple)):
        return gr.CheckboxGroup(list(arg.choices), value=list(value), label=arg.label, elem_id=elem_id)
    if arg.choices is not None:
        return gr.Dropdown(list(arg.choices), value=value, label=arg.label, elem_id=elem_id)
    if isinstance(value, bool):
        return gr.Checkbox(value, label=arg.label, elem_id=elem_id)
    if isinstance(value, (int, float)) and arg.minimum is not None and arg.maximum is not None:
        step = arg.step if arg.step is not None else (1 if isinstance(value, int) else 0.01)
        return gr.Slider(arg.minimum, arg.maximum, value=value, step=step, label=arg.label, elem_id=elem_id)
    if isinstance(value, (int, float)):
        return gr.Number(value, label=arg.label, precision=0 if isinstance(value, int) else None, elem_id=elem_id)
    return gr.Textbox("" if value is None else str(value), label=arg.label, lines=arg.lines, elem_id=elem_id)


class GradioScriptUiContext(ScriptUiContext):
    def __init__(self, tab: str, script: Script, app: AppView) -> None:
        self.tab = tab
        self.elem_prefix = f"{tab}_script_" + "".join(c if c.isalnum() else "_" for c in script.name)
        self.app = app

    def components_for(self, args: Sequence[ScriptArg]) -> list[gr.components.Component]:
        return [arg_component(arg, f"{self.elem_prefix}_{index}") for index, arg in enumerate(args)]


def _script_inputs(app: App, tab: str, script: Script) -> list[Any] | None:
    """The script's inputs, or None when its ui() raised (its extension is then disabled)."""
    try:
        components = list(script.ui(GradioScriptUiContext(tab, script, app.extensions.view)))
        if not all(isinstance(component, gr.components.Component) for component in components):
            raise TypeError("ui() must return a list of gradio components")
        return components
    except Exception as error:
        owner = app.extensions.owner_of(script)
        if owner == CORE:
            raise
        app.extensions.fail(owner, f"script {script.title!r} ui", error)
        return None


def _add_inputs(fields: NamedComponents, script: Script, components: list[Any]) -> None:
    for index, component in enumerate(components):
        fields.add(arg_field(script, index), component)


def build_script_controls(app: App, tab: str, fields: NamedComponents) -> ScriptControls:
    """Always-on scripts' inputs, then the Script dropdown and one hidden group per selectable script."""
    for script in app.extensions.scripts(tab, always_on=True):
        with gr.Accordion(script.title, open=False) as accordion:
            components = _script_inputs(app, tab, script)
        if components:
            _add_inputs(fields, script, components)
        else:
            accordion.visible = False  # nothing to show (a script configured elsewhere, or a failed ui())
    selectable = [script for script in app.extensions.scripts(tab, always_on=False)]
    dropdown = fields.add(SCRIPT_FIELD, gr.Dropdown([NO_SCRIPT, *(script.title for script in selectable)],
                                                    value=NO_SCRIPT, label="Script", elem_id=f"{tab}_script"))
    controls = ScriptControls(dropdown)
    for script in selectable:
        with gr.Group(visible=False, elem_id=f"{tab}_script_group_{len(controls.groups)}") as group:
            components = _script_inputs(app, tab, script)
        if components is not None:
            _add_inputs(fields, script, components)
            controls.groups[script.title] = group
    return controls


def wire_script_controls(controls: ScriptControls) -> None:
    """Show the selected script's inputs only."""
    groups = controls.groups

    def show(title: str) -> dict[Any, Any]:
        return {group: gr.Group(visible=name == title) for name, group in groups.items()}

    if groups:
        controls.dropdown.change(show, inputs=controls.dropdown, outputs=list(groups.values()),
                                 show_progress="hidden")
