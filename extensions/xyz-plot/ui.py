"""The X/Y/Z plot's inputs in the Script area (A1111's layout): per axis a type, a values box, and for axes with a
fixed list of values (sampler, checkpoint, ...) a multi-select instead of the box. Returns A1111's 18 inputs."""
from __future__ import annotations

from typing import Any

from modules.extensions.api import ScriptUiContext

from .axes import Axis, axes_for
from .plan import AXIS_NAMES, MAX_MARGIN


def _choices(axis: Axis, ctx: ScriptUiContext) -> list[str] | None:
    return axis.choices(ctx.app) if axis.choices is not None else None


def build(ctx: ScriptUiContext) -> list[Any]:
    import gradio as gr  # only the UI needs gradio; the script itself runs without it (API only)

    axes = axes_for(ctx.tab)
    type_choices = [(axis.label, index) for index, axis in enumerate(axes) if axis.supported_in(ctx.tab)]
    prefix = ctx.elem_prefix
    rows = []
    for name, default in zip(AXIS_NAMES, (1, 0, 0)):
        key = name.lower()
        with gr.Row(equal_height=True):
            kind = gr.Dropdown(type_choices, value=default, label=f"{name} type", elem_id=f"{prefix}_{key}_type",
                               scale=2)
            text = gr.Textbox(label=f"{name} values", lines=1, elem_id=f"{prefix}_{key}_values", scale=5,
                              placeholder="1, 2, 3 · 1-5 · 1-5 (+2) · 1-10 [5] · \"quoted, text\"")
            chosen = gr.Dropdown([], value=[], multiselect=True, label=f"{name} values", visible=False, scale=5,
                                 elem_id=f"{prefix}_{key}_values_dropdown")
            fill = gr.Button("📒", visible=False, scale=0, min_width=40, elem_id=f"{prefix}_fill_{key}")
        rows.append((kind, text, chosen, fill))
    with gr.Row():
        draw_legend = gr.Checkbox(True, label="Draw legend", elem_id=f"{prefix}_draw_legend")
        no_fixed_seeds = gr.Checkbox(False, label="Keep -1 for seeds", elem_id=f"{prefix}_no_fixed_seeds")
        vary = [gr.Checkbox(False, label=f"Vary seeds for {name}", elem_id=f"{prefix}_vary_seeds_{name.lower()}")
                for name in AXIS_NAMES]
    with gr.Row():
        include_lone_images = gr.Checkbox(False, label="Include Sub Images", elem_id=f"{prefix}_include_lone_images")
        include_sub_grids = gr.Checkbox(False, label="Include Sub Grids", elem_id=f"{prefix}_include_sub_grids")
        csv_mode = gr.Checkbox(False, label="Use text inputs instead of dropdowns", elem_id=f"{prefix}_csv_mode")
    margin_size = gr.Slider(0, MAX_MARGIN, value=0, step=2, label="Grid margins (px)", elem_id=f"{prefix}_margin")
    with gr.Row():
        swaps = [(gr.Button(f"Swap {a}/{b} axes", size="sm"), i, j)
                 for a, b, i, j in (("X", "Y", 0, 1), ("Y", "Z", 1, 2), ("X", "Z", 0, 2))]
    _wire(ctx, axes, rows, csv_mode, swaps)
    return [part for kind, text, chosen, _fill in rows for part in (kind, text, chosen)] + [
        draw_legend, include_lone_images, include_sub_grids, no_fixed_seeds, *vary, margin_size, csv_mode]


def _wire(ctx: ScriptUiContext, axes: list[Axis], rows: list[tuple[Any, ...]], csv_mode: Any,
          swaps: list[tuple[Any, int, int]]) -> None:
    import gradio as gr

    def select_axis(index: int | None, current: list[str] | None, text_only: bool) -> tuple[Any, Any, Any]:
        axis = axes[index or 0]
        choices = None if text_only else _choices(axis, ctx)
        shown = choices is not None
        kept = [value for value in (current or []) if shown and value in choices]
        return (gr.Textbox(visible=not shown), gr.Dropdown(choices=choices or [], value=kept, visible=shown),
                gr.Button(visible=shown))

    for kind, text, chosen, fill in rows:
        kind.change(select_axis, inputs=[kind, chosen, csv_mode], outputs=[text, chosen, fill], show_progress="hidden")
        csv_mode.change(select_axis, inputs=[kind, chosen, csv_mode], outputs=[text, chosen, fill],
                        show_progress="hidden")
        fill.click(lambda index: _choices(axes[index or 0], ctx) or [], inputs=kind, outputs=chosen,
                   show_progress="hidden")
    for button, first, second in swaps:
        parts = [*rows[first][:3], *rows[second][:3]]
        button.click(lambda a, b, c, d, e, f: (d, e, f, a, b, c), inputs=parts, outputs=parts, show_progress="hidden")
