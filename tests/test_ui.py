"""The web UI: it builds, and its handlers (thin adapters) map form values ↔ requests and infotexts correctly."""
from __future__ import annotations

import time
from pathlib import Path

import gradio as gr
import pytest
from PIL import Image, PngImagePlugin

from modules.app import App, create_app
from modules.engine.request import GenerationRequest, HiresOptions, RequestError
from modules.jobs import JobState, ProgressSnapshot
from modules.models.manager import NoCheckpointError
from modules.options import parse_options
from modules.settings import SettingsError
from modules.ui import build_ui, pnginfo, results, settings_tab, topbar, txt2img
from modules.ui.paste import infotext_to_paste, looks_like_infotext, paste_infotext
from modules.ui.txt2img_form import default_form_values, request_from_form, submit_txt2img, token_counter_text
from tests.fixtures.tiny_models import write_tiny_sd15_single_file

UPSCALERS = ("Latent", "Latent (nearest)", "Lanczos", "Nearest")


def _make_app(data: Path, checkpoints: tuple[str, ...]) -> App:
    for seed, name in enumerate(checkpoints):
        write_tiny_sd15_single_file(data / "models" / "Stable-diffusion" / name, seed=seed)
    return create_app(parse_options(["--data-dir", str(data)]))


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> App:
    application = _make_app(tmp_path_factory.mktemp("ui"), ("alpha.safetensors", "beta.safetensors"))
    yield application
    application.jobs.shutdown()


@pytest.fixture(scope="module")
def empty_app(tmp_path_factory: pytest.TempPathFactory) -> App:
    application = _make_app(tmp_path_factory.mktemp("ui-empty"), ())
    yield application
    application.jobs.shutdown()


def _elem_ids(blocks: gr.Blocks) -> set[str]:
    return {block.elem_id for block in blocks.blocks.values() if getattr(block, "elem_id", None)}


# ------------------------------------------------------------------------------------------------ building


def test_build_ui_has_the_a1111_controls_and_only_built_tabs(app: App) -> None:
    blocks = build_ui(app)
    assert isinstance(blocks, gr.Blocks)
    ids = _elem_ids(blocks)
    for elem_id in ("setting_sd_model_checkpoint", "setting_sd_vae", "txt2img_prompt", "txt2img_negative_prompt",
                    "txt2img_generate", "txt2img_interrupt", "txt2img_skip", "txt2img_paste", "txt2img_gallery",
                    "txt2img_hr", "txt2img_seed", "pnginfo_image", "pnginfo_send_txt2img", "settings_submit"):
        assert elem_id in ids, elem_id
    tab_labels = {block.label for block in blocks.blocks.values()
                  if isinstance(block, gr.Tab) and (block.elem_id or "").startswith("tab_")}  # top level only
    assert tab_labels == {"txt2img", "img2img", "Outpaint", "Extras", "Models", "PNG Info", "Settings", "Extensions"}
    # the settings tab hides what the top bar edits
    assert "setting_sd_model_checkpoint" in ids and "setting_samples_format" in ids
    assert not any(f.name in topbar.QUICK_SETTINGS for f in settings_tab.editable_fields())
    emphasis = next(b for b in blocks.blocks.values() if getattr(b, "elem_id", None) == "setting_emphasis")
    assert isinstance(emphasis, gr.Dropdown) and "No norm" in [choice[0] for choice in emphasis.choices]


def test_build_ui_without_checkpoint_says_where_to_put_one(empty_app: App) -> None:
    blocks = build_ui(empty_app)
    status = next(b for b in blocks.blocks.values() if getattr(b, "elem_id", None) == "topbar_status")
    assert topbar.NO_CHECKPOINT_MESSAGE in status.value
    assert txt2img.native_size(empty_app) == 512
    with pytest.raises(NoCheckpointError):
        submit_txt2img(empty_app, default_form_values())
    assert token_counter_text(empty_app, "a cat", 20) == ""


def test_default_size_follows_the_loaded_model(app: App) -> None:
    assert txt2img.native_size(app) == app.models.model.native_size == 64
    assert default_form_values(64)["width"] == 64


def test_token_counter_shows_used_of_75(app: App) -> None:
    assert token_counter_text(app, "", 20) == "0/75"
    assert token_counter_text(app, "a red circle", 20) == "3/75"
    assert token_counter_text(app, " ".join(["cat"] * 80), 20) == "80/150"


# ------------------------------------------------------------------------------------------- form → request


def test_request_from_form_maps_every_field() -> None:
    values = {**default_form_values(64), "prompt": "a cat", "negative_prompt": "blurry", "sampler_name": "Euler a",
              "scheduler": "Karras", "steps": 12.0, "cfg_scale": 5.5, "width": 128, "height": 96, "n_iter": 2,
              "batch_size": 3, "seed": 1234}
    request = request_from_form(values)
    assert request == GenerationRequest(prompt="a cat", negative_prompt="blurry", sampler_name="Euler a",
                                        scheduler="Karras", steps=12, cfg_scale=5.5, width=128, height=96, n_iter=2,
                                        batch_size=3, seed=1234, mode="txt2img")
    assert isinstance(request.steps, int) and request.hires is None


def test_variation_fields_count_only_with_extra_ticked() -> None:
    values = {**default_form_values(), "subseed": 77, "subseed_strength": 0.3, "seed_resize_from_w": 256,
              "seed_resize_from_h": 320}
    plain = request_from_form(values)
    assert (plain.subseed, plain.subseed_strength, plain.seed_resize_from_w) == (-1, 0.0, 0)
    varied = request_from_form({**values, "show_extra": True})
    assert (varied.subseed, varied.subseed_strength, varied.seed_resize_from_w, varied.seed_resize_from_h) == (
        77, 0.3, 256, 320)


def test_hires_fields_build_hires_options() -> None:
    values = {**default_form_values(), "enable_hr": True, "hr_upscaler": "Lanczos", "hr_second_pass_steps": 7,
              "denoising_strength": 0.45, "hr_scale": 1.5, "hr_resize_x": 0, "hr_resize_y": 0}
    assert request_from_form(values).hires == HiresOptions(scale=1.5, upscaler="Lanczos", steps=7,
                                                           denoising_strength=0.45)


def test_empty_number_is_a_clear_error() -> None:
    with pytest.raises(RequestError, match="Seed is empty"):
        request_from_form({**default_form_values(), "seed": None})


def test_invalid_size_is_refused_at_submit(app: App) -> None:
    with pytest.raises(RequestError, match="width"):
        submit_txt2img(app, {**default_form_values(), "width": 100})


# ------------------------------------------------------------------------------------------ infotext → form

INFOTEXT = ("a (red) circle\nNegative prompt: blue square\n"
            "Steps: 9, Sampler: DPM++ 2M Karras, CFG scale: 6.5, Seed: 42, Size: 64x72, Model hash: {hash}, "
            "Model: beta, Variation seed: 7, Variation seed strength: 0.25, Denoising strength: 0.5, Clip skip: 2, "
            "Hires upscale: 1.5, Hires steps: 3, Hires upscaler: Latent (nearest), Version: v1.10.1")


def test_paste_infotext_fills_every_field(app: App) -> None:
    beta = app.models.find_checkpoint("beta")
    pasted = paste_infotext(INFOTEXT.format(hash=beta.short_hash), checkpoints=app.models.checkpoints,
                            vae_choices=app.models.vae_choices(), hires_upscalers=UPSCALERS)
    assert pasted.form == {
        "prompt": "a (red) circle", "negative_prompt": "blue square", "steps": 9, "cfg_scale": 6.5, "seed": 42,
        "subseed": 7, "subseed_strength": 0.25, "show_extra": True, "width": 64, "height": 72,
        "sampler_name": "DPM++ 2M", "scheduler": "Karras", "enable_hr": True, "hr_scale": 1.5,
        "hr_second_pass_steps": 3, "denoising_strength": 0.5, "hr_resize_x": 0, "hr_resize_y": 0,
        "hr_upscaler": "Latent (nearest)"}
    assert pasted.checkpoint == beta.title and pasted.clip_skip == 2 and pasted.vae is None
    assert pasted.warnings == []
    # the pasted values make a valid request again
    request = request_from_form({**default_form_values(), **pasted.form})
    assert (request.sampler_name, request.scheduler, request.seed, request.subseed) == ("DPM++ 2M", "Karras", 42, 7)


def test_paste_finds_the_model_by_name_and_warns_about_what_is_missing(app: App) -> None:
    text = ("cat\nSteps: 5, Sampler: DPM adaptive, Seed: 1, Size: 64x64, Model hash: 0000000000, Model: alpha, "
            "VAE: missing.safetensors")
    pasted = paste_infotext(text, checkpoints=app.models.checkpoints, vae_choices=app.models.vae_choices(),
                            hires_upscalers=UPSCALERS)
    assert pasted.checkpoint == app.models.find_checkpoint("alpha").title
    assert "sampler_name" not in pasted.form and pasted.form["enable_hr"] is False
    assert pasted.form["show_extra"] is False
    assert any("DPM adaptive" in w for w in pasted.warnings)
    assert any("missing.safetensors" in w for w in pasted.warnings)
    unknown = paste_infotext("cat\nSteps: 5, Seed: 1, Model: nowhere", checkpoints=app.models.checkpoints,
                             vae_choices=["Automatic"], hires_upscalers=UPSCALERS)
    assert unknown.checkpoint is None and any("nowhere" in w for w in unknown.warnings)


def test_send_seed_and_send_size_settings_are_honoured(app: App) -> None:
    pasted = paste_infotext(INFOTEXT.format(hash="x"), checkpoints=[], vae_choices=[], hires_upscalers=UPSCALERS,
                            send_seed=False, send_size=False)
    assert not {"seed", "subseed", "width", "height", "show_extra"} & set(pasted.form)


def test_paste_button_reads_an_infotext_or_the_last_generation() -> None:
    assert looks_like_infotext("cat\nSteps: 20, Seed: 1")
    assert not looks_like_infotext("a cat sitting on a mat")
    assert infotext_to_paste("cat\nSteps: 20, Seed: 1", "old") == "cat\nSteps: 20, Seed: 1"
    assert infotext_to_paste("  ", "last\nSteps: 5") == "last\nSteps: 5"
    assert infotext_to_paste("a cat sitting on a mat", "last\nSteps: 5") == ""


def test_paste_updates_target_form_and_top_bar(app: App) -> None:
    with gr.Blocks():
        bar = topbar.build_topbar(app)
        tab = txt2img.build_txt2img(app)
    beta = app.models.find_checkpoint("beta")
    updates = txt2img.paste_updates(app, tab, bar, INFOTEXT.format(hash=beta.short_hash))
    assert updates[tab.fields["prompt"]] == "a (red) circle"
    assert updates[tab.fields["sampler_name"]] == "DPM++ 2M"
    assert updates[bar.checkpoint] == beta.title and updates[bar.clip_skip] == 2
    assert updates[tab.hires_accordion].open is True
    assert set(updates) <= set(txt2img.paste_outputs(tab, bar))


# --------------------------------------------------------------------------------------------- PNG Info


def test_png_info_shows_parameters_parsed_fields_and_other_chunks(tmp_path: Path) -> None:
    chunks = PngImagePlugin.PngInfo()
    chunks.add_text("parameters", "a <cat>\nSteps: 20, Seed: 5, Size: 64x64")
    chunks.add_text("Software", "test")
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png", pnginfo=chunks)
    html_text, infotext = pnginfo.image_info_html(Image.open(tmp_path / "x.png"))
    assert infotext == "a <cat>\nSteps: 20, Seed: 5, Size: 64x64"
    assert "a &lt;cat&gt;" in html_text and "<b>Seed</b>" in html_text and "Software" in html_text
    assert pnginfo.image_info_html(Image.new("RGB", (8, 8)))[1] == ""
    assert pnginfo.image_info_html(None) == ("", "")


# ----------------------------------------------------------------------------------- top bar and settings


def test_switch_checkpoint_reports_time_and_refresh_finds_new_files(tmp_path: Path) -> None:
    application = _make_app(tmp_path, ())
    try:
        assert topbar.NO_CHECKPOINT_MESSAGE in topbar.status_message(application)
        write_tiny_sd15_single_file(tmp_path / "models" / "Stable-diffusion" / "one.safetensors", seed=1)
        write_tiny_sd15_single_file(tmp_path / "models" / "Stable-diffusion" / "two.safetensors", seed=2)
        assert topbar.refresh_checkpoints(application).startswith("Loaded one.safetensors")
        two = application.models.find_checkpoint("two").title
        message = topbar.switch_checkpoint(application, two)
        assert message.startswith(f"Loaded {two} in ") and message.endswith(" s")
        assert application.settings.sd_model_checkpoint == two
        assert topbar.switch_checkpoint(application, two) == ""  # already loaded: nothing to do
        with pytest.raises(ValueError, match="no model matches"):
            topbar.switch_checkpoint(application, "nonexistent")
    finally:
        application.jobs.shutdown()


def test_apply_settings_saves_changes_and_rejects_bad_values(app: App) -> None:
    values = {name: getattr(app.settings, name) for name in (f.name for f in settings_tab.editable_fields())}
    assert settings_tab.apply_settings(app, values) == "Nothing changed."
    message = settings_tab.apply_settings(app, {**values, "show_progress_every_n_steps": 2, "samples_save": False})
    assert message == "2 setting(s) changed: samples_save, show_progress_every_n_steps."
    assert app.settings.show_progress_every_n_steps == 2 and "samples_save: false" in app.paths.config_file.read_text()
    with pytest.raises(SettingsError):
        settings_tab.apply_settings(app, {**values, "sd_checkpoints_limit": None})
    settings_tab.apply_settings(app, values)


# ------------------------------------------------------------------------------------------------ generating


def test_progress_html_shows_percent_eta_and_step() -> None:
    snapshot = ProgressSnapshot(state=JobState.RUNNING, job_no=1, job_count=2, step=5, steps=10, fraction=0.75,
                                eta_seconds=65, textinfo="Batch 2", preview=None, preview_id=0,
                                interrupted=False, skipped=False)
    text = results.progress_html(snapshot)
    assert "75% ETA: 1m 05s — Batch 2: step 5/10 (2/2)" in text
    assert "width:75%" in text


def test_generate_streams_progress_then_fills_the_gallery(app: App) -> None:
    with gr.Blocks():
        bar = topbar.build_topbar(app)
        tab = txt2img.build_txt2img(app)
    values = {**default_form_values(64), "prompt": "a red circle", "steps": 2, "batch_size": 2, "seed": 5}
    job = submit_txt2img(app, values)
    updates = list(txt2img.stream_job(tab, job, time.perf_counter()))
    final = updates[-1]
    images = final[tab.gallery]
    assert len(images) == 3  # grid first, then both images
    info = final[tab.gallery_info]
    assert info.seeds == [5, 5, 6] and "Seed: 5" in info.infotexts[0] and "Seed: 6" in info.infotexts[2]
    assert images[2].info["parameters"] == info.infotexts[2]  # downloads keep the infotext
    assert "Steps: 2" in final[tab.info] and "Time taken" in final[tab.info]
    assert final[tab.last_infotext] == info.infotexts[0]
    assert all(tab.progress in update for update in updates)
    info.selected = 2
    assert info.seed() == 6


def test_interrupt_ends_the_stream_with_a_visible_note(app: App) -> None:
    with gr.Blocks():
        topbar.build_topbar(app)
        tab = txt2img.build_txt2img(app)
    job = submit_txt2img(app, {**default_form_values(64), "prompt": "x", "steps": 150, "n_iter": 3, "seed": 1})
    deadline = time.time() + 60
    while job.snapshot().step < 1 and time.time() < deadline:
        time.sleep(0.05)
    app.jobs.interrupt()
    final = list(txt2img.stream_job(tab, job, time.perf_counter()))[-1]
    assert "Interrupted" in final[tab.info]
    assert len(final[tab.gallery]) < 3
