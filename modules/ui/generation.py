"""What the generation tabs (txt2img, img2img) share: the prompt area, sampling and seed controls, the output panel
that streams a job's progress into the gallery, and the events that wire them. Each tab passes its elem_id prefix.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gradio as gr
from PIL import Image

from modules.engine.request import MAX_BATCH_SIZE, MAX_SIZE, MAX_STEPS, MIN_SIZE
from modules.engine.samplers import SAMPLERS, SCHEDULES
from modules.jobs import Job, JobFailed
from modules.ui import results
from modules.ui import styles as styles_ui
from modules.ui.forms import NamedComponents
from modules.ui.paste import PastedInfotext, infotext_to_paste
from modules.ui.topbar import APP_ERRORS, TopBar
from modules.ui.txt2img_form import token_counter_text

if TYPE_CHECKING:
    from modules.app import App

Updates = dict[Any, Any]


@dataclass
class PromptArea:
    token_counters: dict[str, gr.HTML]  # prompt field name → "N/75"
    generate: gr.Button
    interrupt: gr.Button
    skip: gr.Button
    paste: gr.Button
    styles: styles_ui.StylesControls | None = None  # Styles picker + editor (issue 7)
    extra_networks: gr.Button | None = None  # 🎴 shows/hides the extra networks panel (issue 5; txt2img, img2img)


@dataclass
class SeedControls:
    random_seed: gr.Button
    reuse_seed: gr.Button
    random_subseed: gr.Button
    reuse_subseed: gr.Button
    extra_row: gr.Row


@dataclass
class OutputPanel:
    progress: gr.HTML
    preview: gr.Image
    gallery: gr.Gallery
    info: gr.HTML
    gallery_info: gr.State  # results.GalleryInfo of what the gallery shows
    last_infotext: gr.State  # for ↙️ with an empty prompt (A1111 reads its params.txt)
    send_buttons: dict[str, gr.Button]  # send-to target id → button under the gallery

    @property
    def stream_outputs(self) -> list[Any]:
        return [self.progress, self.preview, self.gallery, self.gallery_info, self.info, self.last_infotext]


# ----------------------------------------------------------------------------------------------- layout


def _prompt_row(fields: NamedComponents, prefix: str, name: str, label: str, lines: int, counter: str) -> gr.HTML:
    with gr.Row(equal_height=False):
        fields.add(name, gr.Textbox(label=label, lines=lines, elem_id=f"{prefix}_{name}",
                                    placeholder=f"{label} (Ctrl+Enter to generate)", scale=20))
        return gr.HTML(counter, elem_id=f"{prefix}_{name}_token_counter", min_width=60, scale=1)


def build_prompt_area(app: App, fields: NamedComponents, prefix: str, steps: int, *,
                      extra_networks: bool = False) -> PromptArea:
    """Prompt + negative prompt with token counters, and the Generate / Interrupt / Skip / ↙️ buttons."""
    empty_count = token_counter_text(app, "", steps)
    counters = {}
    with gr.Row():
        with gr.Column(scale=6):
            counters["prompt"] = _prompt_row(fields, prefix, "prompt", "Prompt", 3, empty_count)
            counters["negative_prompt"] = _prompt_row(fields, prefix, "negative_prompt", "Negative prompt", 2,
                                                      empty_count)
        with gr.Column(scale=1, min_width=160):
            generate = gr.Button("Generate", variant="primary", elem_id=f"{prefix}_generate", size="lg")
            with gr.Row():
                interrupt = gr.Button("Interrupt", variant="stop", elem_id=f"{prefix}_interrupt", size="md",
                                      min_width=90)
                skip = gr.Button("Skip", elem_id=f"{prefix}_skip", size="md", min_width=60)
            with gr.Row():
                paste = gr.Button("↙️", elem_id=f"{prefix}_paste", min_width=40)
                networks = gr.Button("🎴", elem_id=f"{prefix}_extra_networks_toggle",
                                     min_width=40) if extra_networks else None
            styles = styles_ui.build_styles_picker(app, fields, prefix)
    styles.editor = styles_ui.build_styles_editor(app, prefix)
    return PromptArea(counters, generate, interrupt, skip, paste, styles, networks)


def build_sampler_controls(fields: NamedComponents, prefix: str, defaults: Mapping[str, Any]) -> None:
    with gr.Row():
        fields.add("sampler_name", gr.Dropdown([s.name for s in SAMPLERS], value=defaults["sampler_name"],
                                               label="Sampling method", elem_id=f"{prefix}_sampling"))
        fields.add("scheduler", gr.Dropdown([s.label for s in SCHEDULES], value=defaults["scheduler"],
                                            label="Schedule type", elem_id=f"{prefix}_scheduler"))
    fields.add("steps", gr.Slider(1, MAX_STEPS, value=defaults["steps"], step=1, label="Sampling steps",
                                  elem_id=f"{prefix}_steps"))


def build_size_sliders(fields: NamedComponents, prefix: str, defaults: Mapping[str, Any]) -> None:
    for name, label in (("width", "Width"), ("height", "Height")):
        fields.add(name, gr.Slider(MIN_SIZE, MAX_SIZE, value=defaults[name], step=8, label=label,
                                   elem_id=f"{prefix}_{name}"))


def build_batch_controls(fields: NamedComponents, prefix: str, defaults: Mapping[str, Any]) -> None:
    fields.add("n_iter", gr.Slider(1, 100, value=defaults["n_iter"], step=1, label="Batch count",
                                   elem_id=f"{prefix}_batch_count"))
    fields.add("batch_size", gr.Slider(1, MAX_BATCH_SIZE, value=defaults["batch_size"], step=1, label="Batch size",
                                       elem_id=f"{prefix}_batch_size"))


def build_cfg_scale(fields: NamedComponents, prefix: str, defaults: Mapping[str, Any]) -> None:
    fields.add("cfg_scale", gr.Slider(1, 30, value=defaults["cfg_scale"], step=0.5, label="CFG Scale",
                                      elem_id=f"{prefix}_cfg_scale"))


def build_seed_controls(fields: NamedComponents, prefix: str, defaults: Mapping[str, Any]) -> SeedControls:
    """Seed with 🎲/♻️, and A1111's 'Extra' row (variation seed and seed resize)."""
    with gr.Row(equal_height=True):
        fields.add("seed", gr.Number(defaults["seed"], label="Seed", precision=0, elem_id=f"{prefix}_seed", scale=4))
        random_seed = gr.Button("🎲", scale=0, min_width=40, elem_id=f"{prefix}_random_seed")
        reuse_seed = gr.Button("♻️", scale=0, min_width=40, elem_id=f"{prefix}_reuse_seed")
        fields.add("show_extra", gr.Checkbox(defaults["show_extra"], label="Extra", scale=1,
                                             elem_id=f"{prefix}_subseed_show"))
    with gr.Row(visible=bool(defaults["show_extra"]), equal_height=True) as extra_row:
        fields.add("subseed", gr.Number(defaults["subseed"], label="Variation seed", precision=0, scale=3))
        random_subseed = gr.Button("🎲", scale=0, min_width=40)
        reuse_subseed = gr.Button("♻️", scale=0, min_width=40)
        fields.add("subseed_strength", gr.Slider(0, 1, value=defaults["subseed_strength"], step=0.01,
                                                 label="Variation strength", scale=3))
        fields.add("seed_resize_from_w", gr.Slider(0, MAX_SIZE, value=defaults["seed_resize_from_w"], step=8,
                                                   label="Resize seed from width", scale=3))
        fields.add("seed_resize_from_h", gr.Slider(0, MAX_SIZE, value=defaults["seed_resize_from_h"], step=8,
                                                   label="Resize seed from height", scale=3))
    return SeedControls(random_seed, reuse_seed, random_subseed, reuse_subseed, extra_row)


def build_output_panel(prefix: str, send_targets: Mapping[str, str], *, gallery_label: str = "Output") -> OutputPanel:
    """Progress, live preview, gallery, send-to buttons (`send_targets`: target id → label), infotext."""
    progress = gr.HTML("", elem_id=f"{prefix}_progress")
    preview = gr.Image(label="Live preview", visible=False, interactive=False, elem_id=f"{prefix}_preview",
                       height=384)
    gallery = gr.Gallery(label=gallery_label, format="png", columns=4, object_fit="contain", height=512,
                         elem_id=f"{prefix}_gallery", interactive=False)
    with gr.Row(elem_id=f"{prefix}_send_row"):
        buttons = {target: gr.Button(label, size="sm", min_width=60, elem_id=f"{prefix}_send_to_{target}")
                   for target, label in send_targets.items()}
    info = gr.HTML("", elem_id=f"html_info_{prefix}")
    return OutputPanel(progress, preview, gallery, info, gr.State(results.GalleryInfo()), gr.State(""), buttons)


# ------------------------------------------------------------------------------------------ job streaming


def _progress_updates(panel: OutputPanel, job: Job) -> Iterator[Updates]:
    """Progress + live preview every ~0.3 s while the job runs."""
    shown_preview = -1
    for snapshot in results.poll_job(job):
        update: Updates = {panel.progress: results.progress_html(snapshot)}
        if snapshot.preview is not None and snapshot.preview_id != shown_preview:
            shown_preview = snapshot.preview_id
            update[panel.preview] = gr.Image(value=snapshot.preview, visible=True)
        yield update


def _merge(info: results.GalleryInfo, more: results.GalleryInfo) -> None:
    info.infotexts += more.infotexts
    info.seeds += more.seeds
    info.subseeds += more.subseeds


def stream_jobs(panel: OutputPanel, jobs: Iterable[Job], started: float) -> Iterator[Updates]:
    """Stream each job in turn, then show all their images in one gallery (or a visible error).

    `jobs` may submit lazily (a batch submits the next image when the previous one is done); an interrupted or
    cancelled job ends the run.
    """
    images: list[Image.Image] = []
    info, notes, last_infotext = results.GalleryInfo(), [], ""
    done = {panel.progress: "", panel.preview: gr.Image(value=None, visible=False)}
    try:
        for job in jobs:
            yield from _progress_updates(panel, job)
            result = job.wait()
            if result is None:  # an interrupt dropped it from the queue before it started
                notes.append("Interrupted before it started.")
                break
            batch_images, batch_info = results.gallery_from_result(result)
            images += batch_images
            _merge(info, batch_info)
            last_infotext = result.first_infotext or last_infotext
            notes += result.warnings
            for note in result.warnings:
                gr.Warning(note)
            if result.interrupted:
                notes.append("Interrupted: showing the images finished so far.")
                break
    except (JobFailed, *APP_ERRORS) as error:
        yield {**done, panel.info: results.error_html(str(error))}
        raise gr.Error(str(error)) from None
    if not images:
        yield {**done, panel.info: results.error_html(" ".join(notes) or "No images were made.")}
        return
    yield {**done, panel.gallery: images, panel.gallery_info: info, panel.last_infotext: last_infotext,
           panel.info: results.infotext_html(info.infotext(), seconds=time.perf_counter() - started, notes=notes)}


def stream_job(panel: OutputPanel, job: Job, started: float) -> Iterator[Updates]:
    """Progress + live preview every ~0.3 s while the job runs, then the gallery (or a visible error)."""
    return stream_jobs(panel, [job], started)


# ------------------------------------------------------------------------------------------------ pasting


def topbar_paste_updates(bar: TopBar, pasted: PastedInfotext) -> Updates:
    """The checkpoint / VAE / clip skip an infotext names; their change events switch the model."""
    return {component: value for component, value in ((bar.checkpoint, pasted.checkpoint), (bar.vae, pasted.vae),
                                                       (bar.clip_skip, pasted.clip_skip)) if value is not None}


def topbar_paste_outputs(bar: TopBar) -> list[Any]:
    return [bar.checkpoint, bar.vae, bar.clip_skip]


def warn_all(warnings: Iterable[str]) -> None:
    for warning in warnings:
        gr.Warning(warning)


# ------------------------------------------------------------------------------------------------ events


def wire_generate(prompt: PromptArea, fields: NamedComponents, panel: OutputPanel,
                  submit: Callable[[dict[str, Any]], Job | Iterable[Job]]) -> None:
    """Generate (button, Enter in a prompt box): `submit(form values)` queues the job(s); the panel streams them."""
    def generate(data: dict[Any, Any]) -> Iterator[Updates]:
        started = time.perf_counter()
        try:
            values = fields.values(data)
            submitted = submit(prompt.styles.prepare(values) if prompt.styles else values)
        except APP_ERRORS as error:
            yield {panel.info: results.error_html(str(error))}
            raise gr.Error(str(error)) from None
        yield from stream_jobs(panel, [submitted] if isinstance(submitted, Job) else submitted, started)

    for trigger in (prompt.generate.click, fields["prompt"].submit, fields["negative_prompt"].submit):
        trigger(generate, inputs=fields.inputs, outputs=panel.stream_outputs, show_progress="hidden",
                concurrency_limit=None)  # the app's job queue orders jobs, so every browser tab may wait on it


def wire_paste(prompt: PromptArea, fields: NamedComponents, panel: OutputPanel,
               paste_updates: Callable[[str], Updates], outputs: list[Any]) -> None:
    """↙️: parse the infotext in the prompt box (or the last generation's) into the form."""
    def paste(prompt_text: str, last_infotext: str) -> Updates:
        text = infotext_to_paste(prompt_text or "", last_infotext or "")
        if not text:
            gr.Warning("Nothing to paste: type or paste an infotext (with a 'Steps: ...' line) into the prompt")
            return {}
        updates = paste_updates(text)
        return prompt.styles.paste(updates, fields) if prompt.styles else updates

    prompt.paste.click(paste, inputs=[fields["prompt"], panel.last_infotext], outputs=outputs)


def wire_generation_controls(app: App, fields: NamedComponents, prompt: PromptArea, seeds: SeedControls,
                             panel: OutputPanel) -> None:
    """Interrupt / Skip, token counters, seed buttons, the Extra row, and gallery selection."""
    def select_image(info: results.GalleryInfo, event: gr.SelectData) -> Updates:
        info.selected = event.index if isinstance(event.index, int) else 0
        return {panel.gallery_info: info, panel.info: results.infotext_html(info.infotext())}

    if prompt.styles is not None:
        styles_ui.wire_styles(app, fields, prompt.styles)
    prompt.interrupt.click(lambda: app.jobs.interrupt(), show_progress="hidden", queue=False)
    prompt.skip.click(lambda: app.jobs.skip(), show_progress="hidden", queue=False)
    for name, counter in prompt.token_counters.items():
        for source in (fields[name], fields["steps"]):
            source.change(lambda text, steps: token_counter_text(app, text, steps), inputs=[fields[name],
                          fields["steps"]], outputs=counter, trigger_mode="always_last", show_progress="hidden")
    panel.gallery.select(select_image, inputs=panel.gallery_info, outputs=[panel.gallery_info, panel.info],
                         show_progress="hidden")
    seeds.random_seed.click(lambda: -1, outputs=fields["seed"], show_progress="hidden")
    seeds.reuse_seed.click(lambda info: info.seed(), inputs=panel.gallery_info, outputs=fields["seed"])
    seeds.random_subseed.click(lambda: -1, outputs=fields["subseed"], show_progress="hidden")
    seeds.reuse_subseed.click(lambda info: info.subseed(), inputs=panel.gallery_info, outputs=fields["subseed"])
    fields["show_extra"].change(lambda shown: gr.Row(visible=shown), inputs=fields["show_extra"],
                                outputs=seeds.extra_row, show_progress="hidden")
