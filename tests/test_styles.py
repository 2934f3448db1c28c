"""Prompt styles: styles.csv in A1111's format (read, atomic write, edit), {prompt} placement, styles applied at
Generate and visible in the infotext, recovered from it on paste, and /sdapi/v1/prompt-styles."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import httpx
import pytest

from modules.app import create_app
from modules.options import LaunchOptions
from modules.server import build_server, start_server
from modules.styles import (
    PromptStyle,
    StyleEditError,
    UnknownStyleError,
    apply_styles,
    delete_style,
    extract_styles,
    merge_prompt,
    read_styles,
    save_style,
    write_styles,
)
from modules.ui import generation, styles_form
from modules.ui import styles as styles_ui
from modules.ui.forms import NamedComponents
from modules.ui.txt2img_form import default_form_values, request_from_form
from tests.fixtures.tiny_models import write_tiny_sd15_single_file

TRICKY = [
    PromptStyle("plain", "masterpiece", "blurry"),
    PromptStyle("wrap", "a photo of {prompt}, 35mm", ""),
    PromptStyle('quotes, "commas"', 'say "hi", then\na new line', "ünïcödé"),
]


def stand_in(path: Path) -> SimpleNamespace:
    """What the styles form reads of the app: where styles.csv is."""
    return SimpleNamespace(paths=SimpleNamespace(styles_file=path))


def test_csv_round_trip_in_a1111_format(tmp_path):
    path = tmp_path / "styles.csv"
    write_styles(path, TRICKY)
    assert path.read_text(encoding="utf-8").splitlines()[0] == "name,prompt,negative_prompt"
    assert read_styles(path) == TRICKY
    assert not list(tmp_path.glob(".*tmp"))  # written through a temp file that is gone
    legacy = tmp_path / "old.csv"  # A1111 ≤ 1.5 called the prompt column "text"
    legacy.write_text('name,text,negative_prompt\nold,"a, b",c\n\n,,\n', encoding="utf-8")
    assert read_styles(legacy) == [PromptStyle("old", "a, b", "c")]
    assert read_styles(tmp_path / "missing.csv") == []


def test_prompt_placeholder_and_appending():
    assert merge_prompt("a photo of {prompt}, 35mm", "a cat") == "a photo of a cat, 35mm"
    assert merge_prompt("masterpiece", "a cat ") == "a cat, masterpiece"
    assert merge_prompt("masterpiece", "") == "masterpiece"
    prompt, negative = apply_styles("a cat", "", ["wrap", "plain"], TRICKY)
    assert (prompt, negative) == ("a photo of a cat, 35mm, masterpiece", "blurry")
    with pytest.raises(UnknownStyleError, match="available: plain, wrap"):
        apply_styles("a cat", "", ["nope"], TRICKY)


def test_styles_are_recovered_from_a_styled_prompt():
    prompt, negative = apply_styles("a cat", "ugly", ["wrap", "plain"], TRICKY)
    assert extract_styles(prompt, negative, TRICKY) == (["wrap", "plain"], "a cat", "ugly")
    assert extract_styles("a dog", "", TRICKY) == ([], "a dog", "")


def test_editor_saves_renames_and_deletes(tmp_path):
    path = tmp_path / "styles.csv"
    app = stand_in(path)
    assert styles_form.save_from_editor(app, styles_form.EditorValues("", "cinematic", "{prompt}, film", "")) == \
        ["cinematic"]
    styles_form.save_from_editor(app, styles_form.EditorValues("", "bright", "bright", "dark"))
    assert styles_form.editor_values(app, "cinematic") == styles_form.EditorValues(
        "cinematic", "cinematic", "{prompt}, film", "")
    assert styles_form.save_from_editor(app, styles_form.EditorValues("cinematic", "film", "{prompt}, film grain",
                                                                      "")) == ["film", "bright"]  # renamed in place
    with pytest.raises(StyleEditError, match="already exists"):
        save_style(path, PromptStyle("bright", "x", ""), replaces="film")
    with pytest.raises(StyleEditError, match="needs a name"):
        save_style(path, PromptStyle("  ", "x", ""))
    assert styles_form.delete_from_editor(app, "film") == ["bright"]
    with pytest.raises(StyleEditError, match="no style"):
        delete_style(path, "film")
    assert styles_form.editor_values(app, "new one").name == "new one"


def test_form_styles_apply_at_generate(tmp_path):
    path = tmp_path / "styles.csv"
    write_styles(path, TRICKY)
    app = stand_in(path)
    values = {**default_form_values(64), "prompt": "a cat", "negative_prompt": "", "styles": ["wrap"]}
    styled = styles_form.styled_values(app, values)
    request = request_from_form(styled)
    assert request.prompt == "a photo of a cat, 35mm" and request.styles == ["wrap"]
    assert styles_form.apply_to_prompts(app, "a cat", "", ["plain"]) == ("a cat, masterpiece", "blurry")
    assert styles_form.styled_values(app, {**values, "styles": []})["prompt"] == "a cat"
    with pytest.raises(UnknownStyleError):
        styles_form.styled_values(app, {**values, "styles": ["gone"]})


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    data = tmp_path_factory.mktemp("styles")
    (data / "models" / "Stable-diffusion").mkdir(parents=True)
    write_tiny_sd15_single_file(data / "models" / "Stable-diffusion" / "tiny.safetensors", seed=1)
    write_styles(data / "styles.csv", TRICKY)
    app = create_app(LaunchOptions(data_dir=str(data), nowebui=True, device="cpu"))
    yield app
    app.jobs.shutdown()


def test_a_styled_job_records_the_style_in_its_infotext_and_paste_brings_it_back(app):
    values = {**default_form_values(64), "prompt": "a red circle", "steps": 1, "seed": 5, "styles": ["wrap", "plain"]}
    result = app.jobs.run(request_from_form(styles_form.styled_values(app, values)), timeout=120)
    infotext = result.infotexts[0]
    assert infotext.startswith("a photo of a red circle, 35mm, masterpiece\nNegative prompt: blurry\n")
    assert result.info["styles"] == ["wrap", "plain"]
    prompt, negative = infotext.split("\n")[0], infotext.split("\n")[1].removeprefix("Negative prompt: ")
    assert styles_form.pasted_styles(app, prompt, negative) == (["wrap", "plain"], "a red circle", "")


def test_prompt_styles_route_and_api_styles(app):
    handle = start_server(build_server(app), "127.0.0.1", 0, log_level="warning")
    try:
        with httpx.Client(base_url=handle.url, timeout=120) as client:
            listed = client.get("/sdapi/v1/prompt-styles").json()
            assert [item["name"] for item in listed] == [style.name for style in TRICKY]
            assert listed[1] == {"name": "wrap", "prompt": "a photo of {prompt}, 35mm", "negative_prompt": ""}
            unknown = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "styles": ["nope"], "steps": 1,
                                                            "width": 64, "height": 64})
            assert unknown.status_code == 422 and "unknown style" in unknown.text
    finally:
        handle.stop()


def test_the_prompt_area_has_the_styles_picker_and_editor(app):
    fields = NamedComponents()
    with gr.Blocks() as blocks:
        area = generation.build_prompt_area(app, fields, "txt2img", 20)
        styles_ui.wire_styles(app, fields, area.styles)
    assert "styles" in fields
    ids = {block.elem_id for block in blocks.blocks.values() if getattr(block, "elem_id", None)}
    assert {"txt2img_styles", "txt2img_style_apply", "txt2img_styles_editor", "txt2img_styles_edit_save",
            "txt2img_styles_edit_delete"} <= ids
    assert area.styles is not None and area.styles.editor is not None
    assert area.styles.dropdown.choices[0][0] == "plain"
