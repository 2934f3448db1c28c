"""The extra networks panel: sidecar user metadata, previews, safetensors/kohya metadata, cards (search, sort,
pages), click-to-insert/remove of LoRA tags and embeddings, and the panel in txt2img and img2img."""
from __future__ import annotations

import json
import os
from pathlib import Path

import gradio as gr
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from modules.app import App, create_app
from modules.engine.image_codec import read_image_info
from modules.models.user_metadata import (UserMetadataError, find_preview, kohya_summary, preview_candidates,
                                          read_safetensors_metadata, read_user_metadata, save_preview, sidecar_path,
                                          tag_counts, write_user_metadata)
from modules.options import parse_options
from modules.ui import build_ui
from modules.ui.extra_networks import PanelView, build_extra_networks
from modules.ui.extra_networks_form import (Card, NetworkIndex, apply_card, filter_cards, lora_prompt_text, page_of,
                                            sort_cards, toggle_in_prompt, user_field_changes, user_field_values,
                                            visible_page)
from modules.ui.extra_networks_html import Thumbnails, cards_html, details_html
from tests.fixtures.tiny_models import write_tiny_sd15_single_file

LORA_KEY = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
KOHYA_METADATA = {
    "ss_sd_model_name": "runwayml/stable-diffusion-v1-5", "ss_base_model_version": "sd_v1",
    "ss_resolution": "(512, 512)", "ss_num_epochs": "10", "ss_epoch": "6", "ss_steps": "1200",
    "ss_network_dim": "16", "ss_network_alpha": "8.0", "ss_network_module": "networks.lora",
    "ss_output_name": "shinyStyle", "ss_num_train_images": "120", "ss_training_started_at": "1700000000.5",
    "ss_tag_frequency": json.dumps({"10_shiny": {"shiny": 40, " red circle": 12, "blue": 3},
                                    "5_extra": {"blue": 20, "shiny": 2, "square": 12}}),
    "ss_bucket_info": json.dumps({"buckets": {"0": {"resolution": [512, 512], "count": 100},
                                              "1": {"resolution": [448, 576], "count": 20}}}),
    "ss_dataset_dirs": json.dumps({"10_shiny": {"n_repeats": 10, "img_count": 100}}),
}


def write_kohya_lora(path: Path, metadata: dict[str, str] | None = None) -> Path:
    """A tiny kohya-format LoRA file (one layer) with `ss_*` training metadata."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {f"{LORA_KEY}.lora_down.weight": torch.zeros(2, 32), f"{LORA_KEY}.lora_up.weight": torch.zeros(32, 2),
             f"{LORA_KEY}.alpha": torch.tensor(2.0)}
    save_file(state, str(path), metadata=KOHYA_METADATA if metadata is None else metadata)
    return path


def card(name: str, *, kind: str = "lora", mtime: float = 0.0, size: int = 0, user: dict | None = None,
         insert: str | None = None, terms: str = "") -> Card:
    path = Path(f"/models/Lora/{name}.safetensors")
    return Card(kind, str(path), name, path, insert or name, mtime, size, user or {},
                search_text=f"{name} {insert or ''} {path.as_posix()} {terms}".lower())


# ------------------------------------------------------------------------------------------------ sidecar


def test_sidecar_round_trip_keeps_other_keys_and_removes_none(tmp_path: Path) -> None:
    model = tmp_path / "style.v2.safetensors"
    model.write_bytes(b"x")
    assert sidecar_path(model) == tmp_path / "style.v2.json"
    assert read_user_metadata(model) == {}
    sidecar_path(model).write_text(json.dumps({"modelId": 1234, "notes": "old"}))
    written = write_user_metadata(model, {"activation text": "shiny style", "preferred weight": 0.8,
                                          "description": "Glossy — ünïcode", "notes": None, "sd version": "SD1"})
    assert written == read_user_metadata(model) == {"modelId": 1234, "activation text": "shiny style",
                                                    "preferred weight": 0.8, "description": "Glossy — ünïcode",
                                                    "sd version": "SD1"}
    assert "ünïcode" in sidecar_path(model).read_text(encoding="utf-8")  # A1111: ensure_ascii=False, indent=4


def test_failed_write_leaves_the_old_sidecar_and_no_temp_file(tmp_path: Path) -> None:
    model = tmp_path / "style.safetensors"
    write_user_metadata(model, {"notes": "keep me"})
    before = sidecar_path(model).read_bytes()
    with pytest.raises(UserMetadataError, match="cannot save style.json"):
        write_user_metadata(model, {"notes": object()})  # cannot be serialised: nothing is written
    assert sidecar_path(model).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["style.json"]


def test_unreadable_sidecar_is_never_overwritten(tmp_path: Path) -> None:
    model = tmp_path / "style.safetensors"
    sidecar_path(model).write_text('{"notes": "hand-written", ')  # broken JSON
    with pytest.raises(UserMetadataError, match="not valid JSON"):
        read_user_metadata(model)
    with pytest.raises(UserMetadataError, match="fix or delete it"):
        write_user_metadata(model, {"notes": "new"})
    assert sidecar_path(model).read_text() == '{"notes": "hand-written", '


# ------------------------------------------------------------------------------------------------ previews


def test_preview_lookup_order_is_a1111s(tmp_path: Path) -> None:
    model = tmp_path / "style.safetensors"
    assert [p.name for p in preview_candidates(model)][:4] == ["style.png", "style.preview.png", "style.jpg",
                                                                "style.preview.jpg"]
    assert find_preview(model) is None
    for name in ("style.preview.webp", "style.jpg", "style.preview.png", "style.png"):
        Image.new("RGB", (8, 8)).save(tmp_path / name)
        assert find_preview(model) == tmp_path / name  # each one written outranks the ones before it


def test_save_preview_writes_the_file_the_lookup_finds_with_its_infotext(tmp_path: Path) -> None:
    model = tmp_path / "style.safetensors"
    Image.new("RGB", (8, 8)).save(tmp_path / "style.jpg")
    image = Image.new("RGB", (16, 16), (200, 10, 10))
    image.info["parameters"] = "a red circle\nSteps: 4, Seed: 1"
    written = save_preview(model, image)
    assert written == tmp_path / "style.preview.png" == find_preview(model)
    with Image.open(written) as saved:
        assert read_image_info(saved)[0] == "a red circle\nSteps: 4, Seed: 1"
        assert saved.getpixel((0, 0)) == (200, 10, 10)
    Image.new("RGB", (8, 8)).save(tmp_path / "style.png")  # a user's own <stem>.png wins the lookup ...
    assert save_preview(model, image) == tmp_path / "style.png" == find_preview(model)  # ... so it is replaced


# ------------------------------------------------------------------------------------ safetensors / kohya


def test_safetensors_metadata_and_kohya_summary(tmp_path: Path) -> None:
    lora = write_kohya_lora(tmp_path / "shiny.safetensors")
    metadata = read_safetensors_metadata(lora)
    assert metadata == KOHYA_METADATA
    summary = kohya_summary(metadata)
    assert summary is not None
    assert (summary.base_model, summary.base_model_version, summary.resolution, summary.epochs, summary.steps,
            summary.network_dim, summary.network_alpha) == (
        "runwayml/stable-diffusion-v1-5", "sd_v1", "512x512", "6 of 10", "1200", "16", "8.0")
    # summed over both datasets, most frequent first, ties by name; whitespace around tags stripped
    assert summary.tags == [("shiny", 42), ("blue", 23), ("red circle", 12), ("square", 12)]
    assert summary.buckets == [("512x512", 100), ("448x576", 20)]
    assert summary.dataset_dirs == [("10_shiny", 100, 10)]
    assert ("Training started", "2023-11-14 22:13 UTC") in summary.rows()
    assert kohya_summary({"modelspec.title": "x"}) is None
    # readers that already decoded the JSON values (app.loras.metadata()) give the same tags
    assert tag_counts({"ss_tag_frequency": json.loads(KOHYA_METADATA["ss_tag_frequency"])}) == summary.tags


def test_dataset_config_runs_keep_resolution_per_dataset() -> None:
    summary = kohya_summary({"ss_datasets": json.dumps([{"resolution": [1024, 1024]}]), "ss_num_epochs": "4"})
    assert summary is not None and summary.resolution == "1024x1024" and summary.epochs == "4"


def test_metadata_reading_never_loads_tensors_and_rejects_bad_headers(tmp_path: Path) -> None:
    assert read_safetensors_metadata(tmp_path / "missing.safetensors") == {}
    pickle = tmp_path / "old.pt"
    pickle.write_bytes(b"not read")
    assert read_safetensors_metadata(pickle) == {}
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes((10**12).to_bytes(8, "little") + b"{}")
    with pytest.raises(UserMetadataError, match="header length"):
        read_safetensors_metadata(bad)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(b"\x01\x00")
    with pytest.raises(UserMetadataError, match="too short"):
        read_safetensors_metadata(truncated)


# -------------------------------------------------------------------------------------- search, sort, pages


def test_search_matches_name_alias_path_and_tags_with_every_word() -> None:
    cards = [card("shiny", insert="shinyStyle", terms="red circle blue"), card("matte", terms="square"),
             card("neon_glow")]
    assert [c.name for c in filter_cards(cards, "SHINYSTYLE")] == ["shiny"]  # alias, case-insensitive
    assert [c.name for c in filter_cards(cards, "square")] == ["matte"]  # training tag
    assert [c.name for c in filter_cards(cards, "models/lora neon")] == ["neon_glow"]  # path + name
    assert [c.name for c in filter_cards(cards, "red square")] == []  # every word must match
    assert len(filter_cards(cards, "  ")) == 3


def test_sort_by_name_date_and_size_in_both_directions() -> None:
    cards = [card("beta", mtime=3, size=10), card("Alpha", mtime=1, size=30), card("gamma", mtime=2, size=20)]
    assert [c.name for c in sort_cards(cards, "Name")] == ["Alpha", "beta", "gamma"]
    assert [c.name for c in sort_cards(cards, "Name", descending=True)] == ["gamma", "beta", "Alpha"]
    assert [c.name for c in sort_cards(cards, "Date modified")] == ["Alpha", "gamma", "beta"]
    assert [c.name for c in sort_cards(cards, "Date modified", descending=True)] == ["beta", "gamma", "Alpha"]
    assert [c.name for c in sort_cards(cards, "Size", descending=True)] == ["Alpha", "gamma", "beta"]


def test_pages_render_at_most_one_page_of_hundreds_of_cards() -> None:
    cards = [card(f"lora{i:03d}") for i in range(300)]
    page = visible_page(cards, "", "Name", "Descending", 1)
    assert (page.page, page.pages, page.total, len(page.cards)) == (1, 7, 300, 48)
    assert page.cards[0].name == "lora251"
    assert page_of(cards, 99).page == 6 and len(page_of(cards, 99).cards) == 300 - 6 * 48  # clamped to the last
    html = cards_html("lora", page, Thumbnails())
    assert html.count('class="en-card"') == 48 and "Page 2 of 7 · 300 LoRAs" in html


# ------------------------------------------------------------------------------------- prompt insert/remove


def test_lora_card_inserts_tag_with_preferred_weight_and_activation_text_then_removes_it() -> None:
    lora = card("shiny", insert="shinyStyle", user={"preferred weight": 0.8, "activation text": "shiny style"})
    assert lora_prompt_text(lora) == "<lora:shinyStyle:0.8> shiny style"
    added = apply_card(lora, "a red circle", "blurry", separator=", ")
    assert (added.prompt, added.negative_prompt) == ("a red circle, <lora:shinyStyle:0.8> shiny style", "blurry")
    removed = apply_card(lora, added.prompt, added.negative_prompt, separator=", ")
    assert (removed.prompt, removed.message) == ("a red circle", "Removed LoRA shinyStyle")


def test_lora_without_preferred_weight_uses_the_default_and_a_hand_edited_weight_is_still_removed() -> None:
    plain = card("matte")
    assert apply_card(plain, "", "").prompt == "<lora:matte:1>"
    assert apply_card(plain, "", "", default_weight=0.6).prompt == "<lora:matte:0.6>"
    assert apply_card(card("matte", user={"preferred weight": 0}), "", "").prompt == "<lora:matte:1>"
    edited = "a cat <lora:matte:-0.35> <lora:other:1>"
    assert toggle_in_prompt(edited, "<lora:matte:1>") == ("a cat <lora:other:1>", False)


def test_lora_negative_text_follows_its_tag() -> None:
    lora = card("shiny", user={"negative text": "dull"})
    added = apply_card(lora, "a cat", "blurry")
    assert (added.prompt, added.negative_prompt) == ("a cat <lora:shiny:1>", "blurry dull")
    removed = apply_card(lora, added.prompt, added.negative_prompt)
    assert (removed.prompt, removed.negative_prompt) == ("a cat", "blurry")


def test_embedding_card_toggles_its_name_in_the_prompt_last_focused() -> None:
    embedding = card("easyneg", kind="textual_inversion")
    added = apply_card(embedding, "a cat", "blurry", to_negative=True)
    assert (added.prompt, added.negative_prompt) == ("a cat", "blurry easyneg")
    assert apply_card(embedding, "a cat", added.negative_prompt, to_negative=True).negative_prompt == "blurry"
    # whole words only: another embedding whose name contains this one is left alone
    assert toggle_in_prompt("easyneg_v2, easyneg", "easyneg", ", ") == ("easyneg_v2", False)
    with pytest.raises(ValueError, match="Checkpoints"):
        apply_card(card("model", kind="checkpoints"), "", "")


def test_user_field_editor_round_trip() -> None:
    lora = card("shiny", user={"activation text": "shiny", "preferred weight": 0.7, "sd version": "SD1"})
    values = user_field_values(lora)
    assert values["activation_text"] == "shiny" and values["preferred_weight"] == 0.7
    changes = user_field_changes("lora", {**values, "notes": "  ", "description": "Glossy"})
    assert changes == {"description": "Glossy", "notes": None, "sd version": "SD1", "activation text": "shiny",
                       "negative text": None, "preferred weight": 0.7}
    assert "activation text" not in user_field_changes("checkpoints", values)


# -------------------------------------------------------------------------------------- with the real app


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> App:
    data = tmp_path_factory.mktemp("networks")
    write_tiny_sd15_single_file(data / "models" / "Stable-diffusion" / "tiny.safetensors")
    lora_dir = data / "my-loras"
    write_kohya_lora(lora_dir / "styles" / "shiny.safetensors")
    write_kohya_lora(lora_dir / "plain.safetensors", metadata={})
    write_user_metadata(lora_dir / "styles" / "shiny.safetensors", {"activation text": "shiny style",
                                                                     "preferred weight": 0.7})
    Image.new("RGB", (300, 200), (0, 128, 255)).save(lora_dir / "styles" / "shiny.preview.png")
    (data / "embeddings").mkdir(parents=True)
    save_file({"emb_params": torch.zeros(2, 768)}, str(data / "embeddings" / "easyneg.safetensors"))
    application = create_app(parse_options(["--data-dir", str(data), "--lora-dir", str(lora_dir)]),
                             load_model=False)
    yield application
    application.jobs.shutdown()


def test_index_lists_every_kind_with_sidecar_preview_alias_and_tags(app: App) -> None:
    index = NetworkIndex()
    index.rebuild(app)
    assert [c.name for c in index.cards("checkpoints")] == ["tiny"]
    assert index.cards("checkpoints")[0].insert == app.models.checkpoints[0].title
    shiny, plain = sorted(index.cards("lora"), key=lambda c: c.name, reverse=True)
    assert (shiny.name, shiny.insert, plain.insert) == ("shiny", "shinyStyle", "plain")  # the unique alias is used
    assert shiny.preview is not None and shiny.preview.name == "shiny.preview.png"
    assert [c.name for c in filter_cards(index.cards("lora"), "red circle")] == ["shiny"]  # by training tags
    assert apply_card(shiny, "", "").prompt == "<lora:shinyStyle:0.7> shiny style"
    (embedding,) = index.cards("textual_inversion")
    assert (embedding.name, embedding.badge) == ("easyneg", "SD1")
    assert index.find("lora", str(shiny.path)) == shiny and index.find("lora", "/elsewhere.safetensors") is None


def test_cards_and_details_html_escape_file_text_and_show_training_info(app: App, tmp_path: Path) -> None:
    index = NetworkIndex()
    index.rebuild(app)
    shiny = next(c for c in index.cards("lora") if c.name == "shiny")
    html = cards_html("lora", page_of([shiny], 0), Thumbnails())
    assert 'src="data:image/jpeg;base64,' in html and "shiny style" in html
    details = details_html(shiny)
    for text in ("runwayml/stable-diffusion-v1-5", "512x512", "6 of 10", "Training tags (4)",
                 '<span class="en-tag">shiny <b>42</b></span>', f"safetensors metadata ({len(KOHYA_METADATA)} keys)"):
        assert text in details, text
    hostile = card('<img src=x onerror="alert(1)">', user={"description": "<script>x</script>"})
    rendered = cards_html("lora", page_of([hostile], 0), Thumbnails())
    assert "<script>" not in rendered and "<img src=x" not in rendered


def test_panel_view_renders_and_refresh_finds_new_files(app: App) -> None:
    with gr.Blocks():
        panel = build_extra_networks("t")
    view = PanelView(app, panel)
    view.index.rebuild(app)
    pages: dict[str, int] = {}
    assert "shiny" in view.render("lora", "", "Name", "Ascending", pages) and pages == {"lora": 0}
    new_lora = write_kohya_lora(app.paths.lora_dir / "fresh.safetensors", metadata={})
    try:
        app.loras.refresh()
        view.index.rebuild(app)
        assert "fresh" in view.render("lora", "fresh", "Name", "Ascending", pages)
    finally:
        os.remove(new_lora)
        app.loras.refresh()


def test_panel_is_in_txt2img_and_img2img(app: App) -> None:
    blocks = build_ui(app)
    ids = {block.elem_id for block in blocks.blocks.values() if getattr(block, "elem_id", None)}
    for prefix in ("txt2img", "img2img"):
        for suffix in ("extra_networks", "extra_networks_toggle", "extra_networks_search", "extra_networks_refresh",
                       "checkpoints_cards_html", "lora_cards_html", "textual_inversion_cards_html",
                       "extra_networks_save", "extra_networks_use_preview"):
            assert f"{prefix}_{suffix}" in ids, f"{prefix}_{suffix}"
    assert "outpaint_extra_networks_toggle" not in ids
