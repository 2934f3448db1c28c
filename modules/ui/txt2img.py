"""The txt2img tab: `build_txt2img` lays it out, `wire_txt2img` connects events to thin handlers.

Handlers turn form values into a GenerationRequest (txt2img_form), submit it, and stream the job's progress.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gradio as gr

from modules.engine.generate import HIRES_UPSCALERS
from modules.engine.request import MAX_BATCH_SIZE, MAX_SIZE, MAX_STEPS, MIN_SIZE
from modules.engine.samplers import SAMPLERS, SCHEDULES
from modules.jobs import Job, JobFailed
from modules.ui import results
from modules.ui.forms import NamedComponents
from modules.ui.paste import infotext_to_paste
from modules.ui.topbar import APP_ERRORS, TopBar
from modules.ui.txt2img_form import (default_form_values, native_size, pasted_for_txt2img, submit_txt2img,
                                     token_counter_text)

if TYPE_CHECKING:
    from modules.app import App


@dataclass
class Txt2ImgTab:
    fields: NamedComponents  # every value that goes into the request, by txt2img_form name
    token_counters: dict[str, gr.HTML]  # prompt field name → "N/75"
    generate: gr.Button
    interrupt: gr.Button
    skip: gr.Button
    paste: gr.Button
    random_seed: gr.Button
    reuse_seed: gr.Button
    random_subseed: gr.Button
    reuse_subseed: gr.Button
    swap_size: gr.Button
    extra_row: gr.Row
    hires_accordion: gr.Accordion
    progress: gr.HTML
    preview: gr.Image
    gallery: gr.Gallery
    info: gr.HTML
    gallery_info: gr.State  # results.GalleryInfo of what the gallery shows
    last_infotext: gr.State  # for ↙️ with an empty prompt (A1111 reads its params.txt)


# --------------------------------------------------------------------------------------------- handlers


def paste_updates(app: App, tab: Txt2ImgTab, bar: TopBar, text: str) -> dict[Any, Any]:
    """Component updates that put an infotext into the txt2img form and the top bar (PNG Info uses it too)."""
    pasted = pasted_for_txt2img(app, text)
    for warning in pasted.warnings:
        gr.Warning(warning)
    updates = tab.fields.updates(pasted.form)
    if pasted.form.get("enable_hr"):
        updates[tab.hires_accordion] = gr.Accordion(open=True)
    for component, value in ((bar.checkpoint, pasted.checkpoint), (bar.vae, pasted.vae),
                             (bar.clip_skip, pasted.clip_skip)):
        if value is not None:
            updates[component] = value  # their change events switch the model / apply the setting
    return updates


def paste_outputs(tab: Txt2ImgTab, bar: TopBar) -> list[Any]:
    return [*tab.fields.outputs, tab.hires_accordion, bar.checkpoint, bar.vae, bar.clip_skip]


# ----------------------------------------------------------------------------------------------- layout


def _prompt_row(fields: NamedComponents, name: str, label: str, lines: int, counter: str) -> gr.HTML:
    with gr.Row(equal_height=False):
        fields.add(name, gr.Textbox(label=label, lines=lines, elem_id=f"txt2img_{name}",
                                    placeholder=f"{label} (Ctrl+Enter to generate)", scale=20))
        return gr.HTML(counter, elem_id=f"txt2img_{name}_token_counter", min_width=60, scale=1)


def build_txt2img(app: App) -> Txt2ImgTab:
    fields, counters = NamedComponents(), {}
    defaults = default_form_values(native_size(app))
    empty_count = token_counter_text(app, "", defaults["steps"])
    with gr.Row():
        with gr.Column(scale=6):
            counters["prompt"] = _prompt_row(fields, "prompt", "Prompt", 3, empty_count)
            counters["negative_prompt"] = _prompt_row(fields, "negative_prompt", "Negative prompt", 2, empty_count)
        with gr.Column(scale=1, min_width=160):
            generate = gr.Button("Generate", variant="primary", elem_id="txt2img_generate", size="lg")
            with gr.Row():
                interrupt = gr.Button("Interrupt", variant="stop", elem_id="txt2img_interrupt", size="md",
                                      min_width=90)
                skip = gr.Button("Skip", elem_id="txt2img_skip", size="md", min_width=60)
            paste = gr.Button("↙️", elem_id="txt2img_paste", min_width=40)
    with gr.Row(equal_height=False):
        with gr.Column(scale=1):
            with gr.Row():
                fields.add("sampler_name", gr.Dropdown([s.name for s in SAMPLERS], value=defaults["sampler_name"],
                                                       label="Sampling method", elem_id="txt2img_sampling"))
                fields.add("scheduler", gr.Dropdown([s.label for s in SCHEDULES], value=defaults["scheduler"],
                                                    label="Schedule type", elem_id="txt2img_scheduler"))
            fields.add("steps", gr.Slider(1, MAX_STEPS, value=defaults["steps"], step=1, label="Sampling steps",
                                          elem_id="txt2img_steps"))
            hires_accordion = _hires_section(fields, defaults)
            with gr.Row(equal_height=True):
                with gr.Column(scale=4):
                    fields.add("width", gr.Slider(MIN_SIZE, MAX_SIZE, value=defaults["width"], step=8, label="Width",
                                                  elem_id="txt2img_width"))
                    fields.add("height", gr.Slider(MIN_SIZE, MAX_SIZE, value=defaults["height"], step=8,
                                                   label="Height", elem_id="txt2img_height"))
                swap_size = gr.Button("⇅", elem_id="txt2img_res_switch_btn", scale=0, min_width=40)
                with gr.Column(scale=2):
                    fields.add("n_iter", gr.Slider(1, 100, value=defaults["n_iter"], step=1, label="Batch count",
                                                   elem_id="txt2img_batch_count"))
                    fields.add("batch_size", gr.Slider(1, MAX_BATCH_SIZE, value=defaults["batch_size"], step=1,
                                                       label="Batch size", elem_id="txt2img_batch_size"))
            fields.add("cfg_scale", gr.Slider(1, 30, value=defaults["cfg_scale"], step=0.5, label="CFG Scale",
                                              elem_id="txt2img_cfg_scale"))
            with gr.Row(equal_height=True):
                fields.add("seed", gr.Number(defaults["seed"], label="Seed", precision=0, elem_id="txt2img_seed",
                                             scale=4))
                random_seed = gr.Button("🎲", scale=0, min_width=40)
                reuse_seed = gr.Button("♻️", scale=0, min_width=40)
                fields.add("show_extra", gr.Checkbox(defaults["show_extra"], label="Extra", scale=1,
                                                     elem_id="txt2img_subseed_show"))
            with gr.Row(visible=False, equal_height=True) as extra_row:
                fields.add("subseed", gr.Number(defaults["subseed"], label="Variation seed", precision=0, scale=3))
                random_subseed = gr.Button("🎲", scale=0, min_width=40)
                reuse_subseed = gr.Button("♻️", scale=0, min_width=40)
                fields.add("subseed_strength", gr.Slider(0, 1, value=defaults["subseed_strength"], step=0.01,
                                                         label="Variation strength", scale=3))
                fields.add("seed_resize_from_w", gr.Slider(0, MAX_SIZE, value=defaults["seed_resize_from_w"], step=8,
                                                           label="Resize seed from width", scale=3))
                fields.add("seed_resize_from_h", gr.Slider(0, MAX_SIZE, value=defaults["seed_resize_from_h"], step=8,
                                                           label="Resize seed from height", scale=3))
        with gr.Column(scale=1):
            progress = gr.HTML("", elem_id="txt2img_progress")
            preview = gr.Image(label="Live preview", visible=False, interactive=False, elem_id="txt2img_preview",
                               height=384)
            gallery = gr.Gallery(label="Output", format="png", columns=4, object_fit="contain", height=512,
                                 elem_id="txt2img_gallery", interactive=False)
            info = gr.HTML("", elem_id="html_info_txt2img")
    return Txt2ImgTab(fields, counters, generate, interrupt, skip, paste, random_seed, reuse_seed, random_subseed,
                      reuse_subseed, swap_size, extra_row, hires_accordion, progress, preview, gallery, info,
                      gr.State(results.GalleryInfo()), gr.State(""))


def _hires_section(fields: NamedComponents, defaults: dict[str, Any]) -> gr.Accordion:
    with gr.Accordion("Hires. fix", open=False, elem_id="txt2img_hr") as accordion:
        fields.add("enable_hr", gr.Checkbox(defaults["enable_hr"], label="Enable Hires. fix",
                                            elem_id="txt2img_enable_hr"))
        with gr.Row():
            fields.add("hr_upscaler", gr.Dropdown(list(HIRES_UPSCALERS), value=defaults["hr_upscaler"],
                                                  label="Upscaler", elem_id="txt2img_hr_upscaler"))
            fields.add("hr_second_pass_steps", gr.Slider(0, MAX_STEPS, value=defaults["hr_second_pass_steps"],
                                                         step=1, label="Hires steps", elem_id="txt2img_hires_steps"))
            fields.add("denoising_strength", gr.Slider(0, 1, value=defaults["denoising_strength"], step=0.01,
                                                       label="Denoising strength",
                                                       elem_id="txt2img_denoising_strength"))
        with gr.Row():
            fields.add("hr_scale", gr.Slider(1, 4, value=defaults["hr_scale"], step=0.05, label="Upscale by",
                                             elem_id="txt2img_hr_scale"))
            fields.add("hr_resize_x", gr.Slider(0, MAX_SIZE, value=defaults["hr_resize_x"], step=8,
                                                label="Resize width to", elem_id="txt2img_hr_resize_x"))
            fields.add("hr_resize_y", gr.Slider(0, MAX_SIZE, value=defaults["hr_resize_y"], step=8,
                                                label="Resize height to", elem_id="txt2img_hr_resize_y"))
    return accordion


# ------------------------------------------------------------------------------------------------ events


def stream_job(tab: Txt2ImgTab, job: Job, started: float) -> Iterator[dict[Any, Any]]:
    """Progress + live preview every ~0.3 s while the job runs, then the gallery (or a visible error)."""
    shown_preview = -1
    for snapshot in results.poll_job(job):
        update: dict[Any, Any] = {tab.progress: results.progress_html(snapshot)}
        if snapshot.preview is not None and snapshot.preview_id != shown_preview:
            shown_preview = snapshot.preview_id
            update[tab.preview] = gr.Image(value=snapshot.preview, visible=True)
        yield update
    done = {tab.progress: "", tab.preview: gr.Image(value=None, visible=False)}
    try:
        result = job.wait()
    except JobFailed as error:
        yield {**done, tab.info: results.error_html(str(error))}
        raise gr.Error(str(error)) from None
    if result is None:  # an interrupt dropped it from the queue before it started
        yield {**done, tab.info: results.error_html("Interrupted before it started.")}
        return
    images, info = results.gallery_from_result(result)
    notes = [*result.warnings, *(["Interrupted: showing the images finished so far."] if result.interrupted else [])]
    for note in result.warnings:
        gr.Warning(note)
    yield {**done, tab.gallery: images, tab.gallery_info: info,
           tab.info: results.infotext_html(info.infotext(), seconds=time.perf_counter() - started, notes=notes),
           tab.last_infotext: result.first_infotext}


def wire_txt2img(app: App, tab: Txt2ImgTab, bar: TopBar) -> None:
    fields = tab.fields

    def generate(data: dict[Any, Any]) -> Iterator[dict[Any, Any]]:
        started = time.perf_counter()
        try:
            job = submit_txt2img(app, fields.values(data))
        except APP_ERRORS as error:
            yield {tab.info: results.error_html(str(error))}
            raise gr.Error(str(error)) from None
        yield from stream_job(tab, job, started)

    def paste(prompt: str, last_infotext: str) -> dict[Any, Any]:
        text = infotext_to_paste(prompt or "", last_infotext or "")
        if not text:
            gr.Warning("Nothing to paste: type or paste an infotext (with a 'Steps: ...' line) into the prompt")
            return {}
        return paste_updates(app, tab, bar, text)

    def select_image(info: results.GalleryInfo, event: gr.SelectData) -> dict[Any, Any]:
        info.selected = event.index if isinstance(event.index, int) else 0
        return {tab.gallery_info: info, tab.info: results.infotext_html(info.infotext())}

    generate_outputs = [tab.progress, tab.preview, tab.gallery, tab.gallery_info, tab.info, tab.last_infotext]
    for trigger in (tab.generate.click, fields["prompt"].submit, fields["negative_prompt"].submit):
        trigger(generate, inputs=fields.inputs, outputs=generate_outputs, show_progress="hidden",
                concurrency_limit=None)  # the app's job queue orders jobs, so every browser tab may wait on it
    tab.interrupt.click(lambda: app.jobs.interrupt(), show_progress="hidden", queue=False)
    tab.skip.click(lambda: app.jobs.skip(), show_progress="hidden", queue=False)
    tab.paste.click(paste, inputs=[fields["prompt"], tab.last_infotext], outputs=paste_outputs(tab, bar))
    tab.gallery.select(select_image, inputs=tab.gallery_info, outputs=[tab.gallery_info, tab.info],
                       show_progress="hidden")
    for name, counter in tab.token_counters.items():
        for source in (fields[name], fields["steps"]):
            source.change(lambda prompt, steps: token_counter_text(app, prompt, steps), inputs=[fields[name],
                          fields["steps"]], outputs=counter, trigger_mode="always_last", show_progress="hidden")
    tab.random_seed.click(lambda: -1, outputs=fields["seed"], show_progress="hidden")
    tab.reuse_seed.click(lambda info: info.seed(), inputs=tab.gallery_info, outputs=fields["seed"])
    tab.random_subseed.click(lambda: -1, outputs=fields["subseed"], show_progress="hidden")
    tab.reuse_subseed.click(lambda info: info.subseed(), inputs=tab.gallery_info, outputs=fields["subseed"])
    tab.swap_size.click(lambda width, height: (height, width), inputs=[fields["width"], fields["height"]],
                        outputs=[fields["width"], fields["height"]], show_progress="hidden")
    fields["show_extra"].change(lambda shown: gr.Row(visible=shown), inputs=fields["show_extra"],
                                outputs=tab.extra_row, show_progress="hidden")
