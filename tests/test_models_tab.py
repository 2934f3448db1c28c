"""The Models tab: the manager's keep-in-RAM pins, per-checkpoint unload and switch times; the gradio-free form
functions (table, actions, RAM limit, download and merge tasks); and the tab in the built UI."""
from __future__ import annotations

import gc
import threading
import weakref
from pathlib import Path

import gradio as gr
import pytest
import torch

from modules.app import App, create_app
from modules.models.manager import ModelManager
from modules.models.merge import WEIGHTED_SUM
from modules.models.registry import HashCache
from modules.options import parse_options
from modules.ui import build_ui, models_form, models_tab
from tests.fixtures.tiny_models import write_tiny_sd15_single_file, write_tiny_sdxl_single_file


def make_manager(root: Path, ram_limit: int = 1) -> ModelManager:
    return ModelManager(checkpoint_dirs=(root / "Stable-diffusion",), vae_dir=root / "VAE", preview_dirs=(),
                        hash_cache=HashCache(root / "hashes.json"), device=torch.device("cpu"), dtype=torch.float32,
                        ram_limit=ram_limit)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("manager")
    for seed, name in enumerate(("one", "two", "three")):
        write_tiny_sd15_single_file(folder / "Stable-diffusion" / f"{name}.safetensors", seed=seed)
    return folder


def locations(manager: ModelManager) -> dict[str, str]:
    return {entry.stem: manager.location(entry) for entry in manager.checkpoints}


def test_pinned_checkpoint_is_never_evicted(root):
    manager = make_manager(root, ram_limit=1)
    manager.load("one")
    manager.keep_in_ram("two")  # read into RAM now, while "one" is resident
    assert locations(manager) == {"one": "device", "two": "ram", "three": "disk"}
    manager.load("three")
    assert locations(manager) == {"one": "disk", "two": "ram", "three": "device"}  # LRU "one" went, "two" stays
    manager.load("one")
    manager.set_ram_limit(1)
    assert locations(manager)["two"] == "ram" and manager.memory_stats()["pinned"] == [manager.checkpoints[2].title]
    manager.keep_in_ram("two", keep=False)
    assert locations(manager)["two"] == "disk"  # over the limit once unpinned


def test_unload_one_checkpoint_frees_its_weights(root):
    manager = make_manager(root, ram_limit=3)
    manager.load("one")
    manager.load("two")
    unet = weakref.ref(manager.model.components.unet)
    manager.unload_checkpoint("two")  # the resident one
    gc.collect()
    assert unet() is None and manager.current is None
    assert locations(manager) == {"one": "ram", "two": "disk", "three": "disk"}
    manager.keep_in_ram("one")
    manager.unload_checkpoint("one")  # a cached, pinned one: unpinned and freed
    assert locations(manager)["one"] == "disk" and not manager.is_pinned(manager.find_checkpoint("one"))


def test_switch_times_are_recorded_per_checkpoint_with_their_source(root):
    manager = make_manager(root, ram_limit=2)
    for name in ("one", "two", "one"):
        manager.load(name)
    records = list(manager.switch_history)
    assert [(r.title.split(" ")[0], r.source) for r in records] == \
        [("one.safetensors", "disk"), ("two.safetensors", "disk"), ("one.safetensors", "ram")]
    assert all(r.seconds > 0 for r in records)
    one = manager.find_checkpoint("one")
    assert manager.last_switch_for(one) == records[-1].seconds == manager.last_switch_seconds
    assert manager.last_switch_for(manager.find_checkpoint("three")) is None


# ----------------------------------------------------------------------------------------------- form functions


@pytest.fixture
def app(tmp_path) -> App:
    models = tmp_path / "models" / "Stable-diffusion"
    write_tiny_sd15_single_file(models / "alpha.safetensors", seed=1)
    write_tiny_sd15_single_file(models / "beta.safetensors", seed=2)
    write_tiny_sdxl_single_file(models / "xl.safetensors", seed=3)
    application = create_app(parse_options(["--data-dir", str(tmp_path)]))
    yield application
    application.jobs.shutdown()


def test_table_shows_family_hash_size_location_and_actions_update_it(app):
    rows = {row[0]: row for row in models_form.checkpoint_rows(app)}
    assert rows["alpha.safetensors"][1:2] == ["SD 1.5"] and rows["xl.safetensors"][1] == "SDXL"
    assert rows["alpha.safetensors"][2] == app.models.find_checkpoint("alpha").short_hash
    assert rows["alpha.safetensors"][3].endswith("MB") and rows["alpha.safetensors"][4] == "loaded (cpu)"
    assert rows["beta.safetensors"][4] == "disk"
    assert models_form.load_checkpoint(app, "beta.safetensors").startswith("Loaded beta.safetensors [")
    assert app.settings.sd_model_checkpoint.startswith("beta.safetensors")  # saved like the top bar does
    assert "already loaded" in models_form.load_checkpoint(app, "beta.safetensors")
    assert "kept in RAM" in models_form.toggle_keep_in_ram(app, "xl.safetensors")
    rows = {row[0]: row for row in models_form.checkpoint_rows(app)}
    assert rows["xl.safetensors"][4:6] == ["RAM", "yes"] and rows["beta.safetensors"][6].endswith(" s")
    assert "no longer kept" in models_form.toggle_keep_in_ram(app, "xl.safetensors")
    assert "choose a checkpoint before generating" in models_form.unload_checkpoint(app, "beta.safetensors")
    assert app.models.current is None
    assert "| beta.safetensors" in models_form.switch_history_markdown(app)
    with pytest.raises(ValueError, match="choose a checkpoint"):
        models_form.load_checkpoint(app, None)
    with pytest.raises(ValueError, match="no model matches"):
        models_form.unload_checkpoint(app, "missing")


def test_ram_limit_is_applied_through_the_settings(app):
    models_form.load_checkpoint(app, "beta")
    assert "limit 3" in models_form.set_ram_limit(app, 3.0)
    assert app.settings.sd_checkpoints_limit == 3 == app.models.ram_limit
    assert "sd_checkpoints_limit: 3" in app.paths.config_file.read_text()
    for bad in (0, 1.5, None, True):
        with pytest.raises(ValueError, match="at least 1"):
            models_form.set_ram_limit(app, bad)


def test_merge_task_streams_progress_and_lists_the_result(app):
    form = models_form.MergeForm(primary="alpha", secondary="beta", tertiary="", method=WEIGHTED_SUM,
                                 multiplier=0.5, vae="None", custom_name="ab")
    updates = list(models_form.stream_task(models_form.start_merge(app, form), models_form.merge_progress_html,
                                           models_form.merge_result_html))
    assert updates[-1].finished and updates[-1].error is None and "ab.safetensors [" in updates[-1].html
    assert "ab.safetensors" in models_form.checkpoint_names(app)
    bad = models_form.MergeForm(primary="alpha", secondary="xl", tertiary="", custom_name="bad")
    failed = list(models_form.stream_task(models_form.start_merge(app, bad), models_form.merge_progress_html,
                                          models_form.merge_result_html))[-1]
    assert failed.finished and "same family" in failed.error


def test_download_task_reports_errors_as_messages(app):
    with pytest.raises(ValueError, match="enter the URL"):
        models_form.start_download(app, " ", "auto")
    task = models_form.start_download(app, "ftp://example.com/x.safetensors", "auto")
    update = list(models_form.stream_task(task, models_form.download_progress_html,
                                          models_form.download_result_html))[-1]
    assert update.finished and "only http" in update.error


def test_background_task_passes_cancel_and_progress():
    started = threading.Event()

    def work(task: models_form.BackgroundTask) -> str:
        task.report(7)
        started.set()
        task.cancel.wait(5)
        return "stopped" if task.cancel.is_set() else "timeout"

    task = models_form.BackgroundTask.start(work)
    started.wait(5)
    assert next(task.updates(interval=0.01)) == 7
    task.cancel.set()
    updates = list(models_form.stream_task(task, str, lambda result: f"<b>{result}</b>"))
    assert updates[-1].html == "<b>stopped</b>"


def test_progress_labels():
    from modules.models.download import DownloadProgress
    html = models_form.download_progress_html(DownloadProgress("m.safetensors", 3 * 2**20, 6 * 2**20, 2**20, 2**20))
    assert "width:50%" in html and "3.0 of 6.0 MB at 1.0 MB/s, resumed at 1.0 MB" in html
    assert "Connecting" in models_form.download_progress_html(None)
    assert "tensor 2 of 4" in models_form.merge_progress_html((2, 4))
    assert models_form.format_size(1536) == "1.5 KB" and models_form.format_size(12) == "12 B"


def test_models_tab_is_built_after_extras(app):
    with gr.Blocks():
        tab = models_tab.build_models_tab(app)
    updates = models_tab.listing_updates(app, tab, "beta.safetensors")
    assert [row[0] for row in updates[tab.table]] == ["alpha.safetensors", "beta.safetensors", "xl.safetensors"]
    assert updates[tab.selected].value == "beta.safetensors"
    assert set(updates) == set(models_tab.listing_outputs(tab))
    blocks = build_ui(app)
    tabs = [block.label for block in blocks.blocks.values()
            if isinstance(block, gr.Tab) and (block.elem_id or "").startswith("tab_")]
    assert tabs.index("Models") == tabs.index("Extras") + 1
    ids = {getattr(block, "elem_id", None) for block in blocks.blocks.values()}
    for elem_id in ("models_table", "models_load", "models_unload", "models_keep_in_ram", "models_ram_limit",
                    "models_download", "models_download_cancel", "modelmerger_merge", "modelmerger_interp_method"):
        assert elem_id in ids, elem_id
