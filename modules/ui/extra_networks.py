"""The extra networks panel of txt2img and img2img (A1111's 🎴): cards for checkpoints, LoRAs and embeddings.

Clicking a LoRA card toggles `<lora:name:weight>` (+ activation text) in the prompt, an embedding card its name,
a checkpoint card switches the top bar's checkpoint. Each card's (i) button opens the details view: file facts, kohya
training info, safetensors metadata, and the user fields saved in the sidecar JSON. Logic and HTML live in
extra_networks_form / extra_networks_html (gradio-free); here are the layout and thin handlers.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gradio as gr

from modules.models.user_metadata import SD_VERSIONS, UserMetadataError, save_preview, write_user_metadata
from modules.ui.extra_networks_form import (KINDS, SORT_DIRECTIONS, SORT_KEYS, Card, NetworkIndex, apply_card,
                                            rescan, user_field_changes, user_field_values, visible_page)
from modules.ui.extra_networks_html import (CARDS_CSS, DETAILS_CSS, Thumbnails, cards_html, cards_js, details_html,
                                            page_js)
from modules.ui.forms import NamedComponents
from modules.ui.send_to import gallery_selection
from modules.ui.topbar import TopBar, checkpoint_titles

if TYPE_CHECKING:
    from modules.app import App
    from modules.ui.generation import OutputPanel, PromptArea

DEFAULT_KIND = "lora"
Updates = dict[Any, Any]


@dataclass
class DetailsArea:
    column: gr.Column
    selected: gr.State  # (kind, key) of the card shown
    info: gr.HTML
    lora_only: gr.Row  # activation text, negative text, preferred weight
    fields: NamedComponents  # the user fields, by extra_networks_form editor name
    save: gr.Button
    use_preview: gr.Button
    close: gr.Button


@dataclass
class ExtraNetworksPanel:
    prefix: str
    column: gr.Column
    shown: gr.State
    search: gr.Textbox
    sort: gr.Dropdown
    direction: gr.Dropdown
    refresh: gr.Button
    cards: dict[str, gr.HTML]  # kind → its tab's card grid
    pages: gr.State  # {kind: page}
    details: DetailsArea

    @property
    def view_inputs(self) -> list[Any]:
        return [self.search, self.sort, self.direction, self.pages]


# ----------------------------------------------------------------------------------------------- layout


def _build_details(prefix: str) -> DetailsArea:
    fields = NamedComponents()
    with gr.Column(visible=False, variant="panel", elem_id=f"{prefix}_extra_networks_details") as column:
        info = gr.HTML("", css_template=DETAILS_CSS, js_on_load=None, elem_id=f"{prefix}_extra_networks_info")
        with gr.Row(visible=False) as lora_only:
            fields.add("activation_text", gr.Textbox(label="Activation text", scale=3,
                                                     elem_id=f"{prefix}_extra_networks_activation_text"))
            fields.add("negative_text", gr.Textbox(label="Negative prompt text", scale=2))
            fields.add("preferred_weight", gr.Slider(0, 2, value=0, step=0.05, scale=2, label="Preferred weight "
                                                     "(0 = default)", elem_id=f"{prefix}_extra_networks_weight"))
        with gr.Row():
            fields.add("description", gr.Textbox(label="Description", lines=2, scale=3,
                                                 elem_id=f"{prefix}_extra_networks_description"))
            fields.add("sd_version", gr.Dropdown(list(SD_VERSIONS), value="Unknown", label="SD version", scale=1))
        fields.add("notes", gr.Textbox(label="Notes", lines=3, elem_id=f"{prefix}_extra_networks_notes"))
        with gr.Row():
            save = gr.Button("💾 Save", variant="primary", elem_id=f"{prefix}_extra_networks_save")
            use_preview = gr.Button("🖼️ Use the gallery's selected image as preview",
                                    elem_id=f"{prefix}_extra_networks_use_preview")
            close = gr.Button("Close", elem_id=f"{prefix}_extra_networks_close")
    return DetailsArea(column, gr.State(None), info, lora_only, fields, save, use_preview, close)


def build_extra_networks(prefix: str) -> ExtraNetworksPanel:
    """The hidden panel (shown by 🎴); cards are rendered when it opens, so building the UI scans nothing."""
    # in the page but never shown: its JS (PAGE_JS) runs at page load, before the panel is first opened
    gr.HTML("", js_on_load=page_js(prefix), visible="hidden", elem_id=f"{prefix}_extra_networks_js")
    with gr.Column(visible=False, elem_id=f"{prefix}_extra_networks") as column:
        with gr.Row(equal_height=True):
            search = gr.Textbox(placeholder="Search by name, alias, path, tags…", show_label=False, scale=6,
                                elem_id=f"{prefix}_extra_networks_search", container=False)
            sort = gr.Dropdown(list(SORT_KEYS), value=SORT_KEYS[0], show_label=False, scale=2, container=False,
                               elem_id=f"{prefix}_extra_networks_sort")
            direction = gr.Dropdown(list(SORT_DIRECTIONS), value=SORT_DIRECTIONS[0], show_label=False, scale=2,
                                    container=False, elem_id=f"{prefix}_extra_networks_sort_dir")
            refresh = gr.Button("🔄 Refresh", scale=1, min_width=100, size="md",
                                elem_id=f"{prefix}_extra_networks_refresh")
        cards = {}
        with gr.Tabs(selected=DEFAULT_KIND, elem_id=f"{prefix}_extra_networks_tabs"):
            for kind, label in KINDS.items():
                with gr.Tab(label, id=kind, elem_id=f"{prefix}_{kind}_tab"):
                    cards[kind] = gr.HTML("", css_template=CARDS_CSS, js_on_load=cards_js(prefix),
                                          apply_default_css=False, elem_id=f"{prefix}_{kind}_cards_html")
        details = _build_details(prefix)
    return ExtraNetworksPanel(prefix, column, gr.State(False), search, sort, direction, refresh, cards,
                              gr.State({}), details)


# ---------------------------------------------------------------------------------------------- handlers


def _folders(app: App) -> dict[str, str]:
    return {"checkpoints": str(app.paths.ckpt_dirs[0]), "lora": str(app.paths.lora_dir),
            "textual_inversion": str(app.paths.embeddings_dir)}


class PanelView:
    """Renders the panel from the shared index; one per tab (txt2img, img2img)."""

    def __init__(self, app: App, panel: ExtraNetworksPanel) -> None:
        self.app, self.panel = app, panel
        self.index, self.thumbnails = NetworkIndex(), Thumbnails()

    def render(self, kind: str, search: str, sort: str, direction: str, pages: dict[str, int]) -> str:
        page = visible_page(self.index.cards(kind), search or "", sort, direction, pages.get(kind, 0))
        pages[kind] = page.page
        return cards_html(kind, page, self.thumbnails, folder=_folders(self.app)[kind], searching=bool(search))

    def render_all(self, search: str, sort: str, direction: str, pages: dict[str, int]) -> Updates:
        pages = dict(pages or {})
        updates: Updates = {self.panel.cards[kind]: self.render(kind, search, sort, direction, pages)
                            for kind in KINDS}
        return {**updates, self.panel.pages: pages}

    def details_updates(self, card: Card) -> Updates:
        details = self.panel.details
        return {details.column: gr.Column(visible=True), details.selected: (card.kind, card.key),
                details.info: details_html(card), details.lora_only: gr.Row(visible=card.kind == "lora"),
                **details.fields.updates(user_field_values(card))}

    def selected_card(self, selected: tuple[str, str] | None) -> Card:
        card = self.index.find(*selected) if selected else None
        if card is None:
            raise gr.Error("That card is no longer listed: press 🔄 Refresh")
        return card


def _on_card_click(view: PanelView, kind: str, bar: TopBar, prompts: tuple[gr.Textbox, gr.Textbox]) -> Callable:
    panel, app = view.panel, view.app

    def on_click(prompt: str, negative: str, search: str, sort: str, direction: str, pages: dict[str, int],
                 event: gr.EventData) -> Updates:
        action, key = getattr(event, "action", ""), getattr(event, "key", "")
        if action == "page":
            pages = {**(pages or {}), kind: int(getattr(event, "page", 0))}
            return {panel.cards[kind]: view.render(kind, search, sort, direction, pages), panel.pages: pages}
        card = view.index.find(kind, key)
        if card is None:
            gr.Warning("That card is no longer listed: press 🔄 Refresh")
            return {}
        if action == "details":
            return view.details_updates(card)
        if kind == "checkpoints":
            return {bar.checkpoint: gr.Dropdown(choices=checkpoint_titles(app), value=card.insert)}
        settings = app.settings
        edit = apply_card(card, prompt or "", negative or "", to_negative=bool(getattr(event, "negative", False)),
                          default_weight=settings.extra_networks_default_multiplier,
                          separator=settings.extra_networks_add_text_separator)
        return {prompts[0]: edit.prompt, prompts[1]: edit.negative_prompt}
    return on_click


def wire_extra_networks(app: App, panel: ExtraNetworksPanel | None, prompt_area: PromptArea, fields: NamedComponents,
                        output: OutputPanel, bar: TopBar) -> None:
    """🎴 toggles the panel; cards edit `fields`' prompt / negative_prompt or the top bar's checkpoint."""
    if panel is None or prompt_area.extra_networks is None:
        return
    toggle, prompt, negative_prompt = prompt_area.extra_networks, fields["prompt"], fields["negative_prompt"]
    view = PanelView(app, panel)
    details = panel.details
    view_outputs = [*panel.cards.values(), panel.pages]

    def on_toggle(shown: bool, *view_values: Any) -> Updates:
        if shown:
            return {panel.column: gr.Column(visible=False), panel.shown: False}
        view.index.rebuild(app)  # picks up what another tab or the API refreshed
        return {panel.column: gr.Column(visible=True), panel.shown: True, **view.render_all(*view_values)}

    def on_refresh(*view_values: Any) -> Updates:
        for warning in rescan(app):
            gr.Warning(warning)
        view.index.rebuild(app)
        return {**view.render_all(*view_values), bar.checkpoint: gr.Dropdown(choices=checkpoint_titles(app))}

    def on_view_change(search: str, sort: str, direction: str) -> Updates:
        return view.render_all(search, sort, direction, {})  # a new search or order starts at page 1

    def on_save(selected: tuple[str, str] | None, data: dict[Any, Any]) -> Updates:
        card = view.selected_card(selected)
        try:
            write_user_metadata(card.path, user_field_changes(card.kind, details.fields.values(data)))
        except UserMetadataError as error:
            raise gr.Error(str(error)) from None
        gr.Info(f"Saved the user fields of {card.name}")
        return _after_file_change(view, card, data)

    def on_use_preview(selected: tuple[str, str] | None, gallery: Any, gallery_info: Any,
                       data: dict[Any, Any]) -> Updates:
        card = view.selected_card(selected)
        image, _infotext = gallery_selection(gallery, gallery_info)
        if image is None:
            raise gr.Error("No image in the gallery: generate one first, then select it")
        try:
            written = save_preview(card.path, image)
        except UserMetadataError as error:
            raise gr.Error(str(error)) from None
        gr.Info(f"Preview saved as {written.name}")
        return _after_file_change(view, card, data)

    toggle.click(on_toggle, inputs=[panel.shown, *panel.view_inputs],
                 outputs=[panel.column, panel.shown, *view_outputs], show_progress="hidden")
    panel.refresh.click(on_refresh, inputs=panel.view_inputs, outputs=[*view_outputs, bar.checkpoint])
    for source in (panel.search, panel.sort, panel.direction):
        source.change(on_view_change, inputs=[panel.search, panel.sort, panel.direction], outputs=view_outputs,
                      trigger_mode="always_last", show_progress="hidden")
    for kind, grid in panel.cards.items():
        grid.click(_on_card_click(view, kind, bar, (prompt, negative_prompt)),
                   inputs=[prompt, negative_prompt, *panel.view_inputs],
                   outputs=[prompt, negative_prompt, bar.checkpoint, *view_outputs, details.column, details.selected,
                            details.info, details.lora_only, *details.fields.outputs], show_progress="hidden")
    file_inputs = {details.selected, *details.fields.inputs, *panel.view_inputs}
    file_outputs = [*view_outputs, details.info]
    details.save.click(lambda data: on_save(data[details.selected], data), inputs=file_inputs, outputs=file_outputs)
    details.use_preview.click(
        lambda data: on_use_preview(data[details.selected], data[output.gallery], data[output.gallery_info], data),
        inputs={*file_inputs, output.gallery, output.gallery_info}, outputs=file_outputs)
    details.close.click(lambda: gr.Column(visible=False), outputs=details.column, show_progress="hidden")


def _after_file_change(view: PanelView, card: Card, data: dict[Any, Any]) -> Updates:
    """A sidecar or preview changed: re-read the index, redraw the grids and the details of that card."""
    view.index.rebuild(view.app)
    panel = view.panel
    updates = view.render_all(data[panel.search], data[panel.sort], data[panel.direction], data[panel.pages])
    fresh = view.index.find(card.kind, card.key) or card
    return {**updates, panel.details.info: details_html(fresh)}


__all__ = ["ExtraNetworksPanel", "build_extra_networks", "wire_extra_networks"]
