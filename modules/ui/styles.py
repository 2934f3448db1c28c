"""Styles in the generation tabs: a multi-select picker next to Generate (applied at Generate), a button that writes
the selected styles into the prompt boxes, and an editor (pick, edit name/prompt/negative, save, delete).

Layout and wiring only; what the buttons do is in styles_form.py.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gradio as gr

from modules.styles import StyleEditError, UnknownStyleError
from modules.ui import styles_form
from modules.ui.forms import NamedComponents

if TYPE_CHECKING:
    from modules.app import App

Updates = dict[Any, Any]
PLACEHOLDER_HELP = "Use {prompt} where the prompt goes; without it the style text is added after the prompt."


@dataclass
class StylesEditor:
    accordion: gr.Accordion
    selected: gr.Dropdown  # the stored style being edited ("" = a new one)
    name: gr.Textbox
    prompt: gr.Textbox
    negative_prompt: gr.Textbox
    copy_prompts: gr.Button
    save: gr.Button
    delete: gr.Button
    status: gr.Markdown


@dataclass
class StylesControls:
    dropdown: gr.Dropdown  # also the form field "styles"
    apply: gr.Button
    refresh: gr.Button
    editor: StylesEditor | None
    prepare: Callable[[dict[str, Any]], dict[str, Any]]  # form values → values with the styles applied
    extract: Callable[[str, str], tuple[list[str], str, str]]  # (prompt, negative) → (styles, prompt, negative)

    def paste(self, updates: Updates, fields: NamedComponents) -> Updates:
        """After pasting an infotext: move the texts of known styles out of the prompts into the dropdown."""
        prompt, negative = fields["prompt"], fields["negative_prompt"]
        if prompt not in updates:
            return updates
        names, new_prompt, new_negative = self.extract(str(updates[prompt]), str(updates.get(negative, "")))
        if not names:
            return updates
        return {**updates, prompt: new_prompt, negative: new_negative, self.dropdown: names}


# ----------------------------------------------------------------------------------------------- layout


def build_styles_picker(app: App, fields: NamedComponents, prefix: str) -> StylesControls:
    """The Styles dropdown (form field "styles") with its apply (📋) and refresh (🔄) buttons."""
    with gr.Row(equal_height=True):
        dropdown = fields.add("styles", gr.Dropdown(styles_form.style_names(app), value=[], multiselect=True,
                                                    label="Styles", elem_id=f"{prefix}_styles", scale=4))
        apply = gr.Button("📋", elem_id=f"{prefix}_style_apply", scale=0, min_width=40)
        refresh = gr.Button("🔄", elem_id=f"{prefix}_styles_refresh", scale=0, min_width=40)
    return StylesControls(dropdown, apply, refresh, None,
                          prepare=lambda values: styles_form.styled_values(app, values),
                          extract=lambda prompt, negative: styles_form.pasted_styles(app, prompt, negative))


def build_styles_editor(app: App, prefix: str) -> StylesEditor:
    with gr.Accordion("Styles editor", open=False, elem_id=f"{prefix}_styles_editor") as accordion:
        with gr.Row(equal_height=True):
            selected = gr.Dropdown(["", *styles_form.style_names(app)], value="", label="Style to edit (empty = new)",
                                   elem_id=f"{prefix}_styles_edit_select", scale=2)
            name = gr.Textbox(label="Name", elem_id=f"{prefix}_styles_edit_name", scale=2)
        prompt = gr.Textbox(label="Prompt", lines=2, info=PLACEHOLDER_HELP, elem_id=f"{prefix}_styles_edit_prompt")
        negative = gr.Textbox(label="Negative prompt", lines=2, elem_id=f"{prefix}_styles_edit_negative")
        with gr.Row():
            copy_prompts = gr.Button("Copy from the prompt boxes", size="sm")
            save = gr.Button("Save style", variant="primary", size="sm", elem_id=f"{prefix}_styles_edit_save")
            delete = gr.Button("Delete style", variant="stop", size="sm", elem_id=f"{prefix}_styles_edit_delete")
        status = gr.Markdown("")
    return StylesEditor(accordion, selected, name, prompt, negative, copy_prompts, save, delete, status)


# ------------------------------------------------------------------------------------------------ events


def wire_styles(app: App, fields: NamedComponents, controls: StylesControls) -> None:
    prompt, negative = fields["prompt"], fields["negative_prompt"]

    def apply(prompt_text: str, negative_text: str, names: Any) -> tuple[str, str, list[str]]:
        try:
            new_prompt, new_negative = styles_form.apply_to_prompts(app, prompt_text, negative_text, names)
        except UnknownStyleError as error:
            raise gr.Error(str(error)) from None
        return new_prompt, new_negative, []

    controls.apply.click(apply, inputs=[prompt, negative, controls.dropdown],
                         outputs=[prompt, negative, controls.dropdown], show_progress="hidden")
    refresh_outputs = [controls.dropdown] + ([controls.editor.selected] if controls.editor else [])
    controls.refresh.click(lambda: _choice_updates(app, controls), outputs=refresh_outputs, show_progress="hidden")
    if controls.editor is not None:
        wire_styles_editor(app, fields, controls)


def wire_styles_editor(app: App, fields: NamedComponents, controls: StylesControls) -> None:
    editor = controls.editor
    assert editor is not None
    fill = [editor.selected, editor.name, editor.prompt, editor.negative_prompt]
    choice_outputs = [controls.dropdown, editor.selected]

    def select(name: str) -> tuple[str, str, str, str]:
        values = styles_form.editor_values(app, name)
        return values.selected, values.name, values.prompt, values.negative_prompt

    def save(selected: str, name: str, prompt: str, negative: str) -> Updates:
        try:
            styles_form.save_from_editor(app, styles_form.EditorValues(selected or "", name or "", prompt, negative))
        except (StyleEditError, OSError) as error:
            return {editor.status: f"⚠️ {error}"}
        return {**_choice_updates(app, controls, selected=name.strip()),
                editor.status: f"Saved style **{name.strip()}** to styles.csv."}

    def delete(selected: str) -> Updates:
        try:
            styles_form.delete_from_editor(app, selected or "")
        except (StyleEditError, OSError) as error:
            return {editor.status: f"⚠️ {error}"}
        return {**_choice_updates(app, controls, selected=""), editor.name: "", editor.prompt: "",
                editor.negative_prompt: "", editor.status: f"Deleted style **{selected}**."}

    editor.selected.input(select, inputs=editor.selected, outputs=fill, show_progress="hidden")
    editor.copy_prompts.click(lambda p, n: (p, n), inputs=[fields["prompt"], fields["negative_prompt"]],
                              outputs=[editor.prompt, editor.negative_prompt], show_progress="hidden")
    editor.save.click(save, inputs=fill, outputs=[*choice_outputs, editor.status], show_progress="hidden")
    editor.delete.click(delete, inputs=editor.selected,
                        outputs=[*choice_outputs, editor.name, editor.prompt, editor.negative_prompt, editor.status],
                        show_progress="hidden")


def _choice_updates(app: App, controls: StylesControls, *, selected: str | None = None) -> Updates:
    names = styles_form.style_names(app)
    updates: Updates = {controls.dropdown: gr.Dropdown(choices=names)}
    if controls.editor is not None:
        editor_update = gr.Dropdown(choices=["", *names]) if selected is None else \
            gr.Dropdown(choices=["", *names], value=selected)
        updates[controls.editor.selected] = editor_update
    return updates
