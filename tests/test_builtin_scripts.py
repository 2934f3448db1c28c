"""The built-in extensions X/Y/Z plot, Prompt matrix and Prompts from file, run on tiny random SD1.5 checkpoints
through the extension host (as the UI does) and over HTTP with A1111's script_name / script_args."""
from __future__ import annotations

import base64
import importlib
import io
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from modules.app import create_app
from modules.engine.request import GenerationRequest
from modules.extensions import loader
from modules.extensions.manifest import read_manifest
from modules.options import LaunchOptions
from modules.paths import PROJECT_ROOT
from modules.server import build_server, start_server
from tests.fixtures.tiny_models import write_tiny_sd15_single_file

API = "/sdapi/v1"
XYZ = "x/y/z plot"


def extension_module(folder_name: str, module: str):
    """A module of a built-in extension, imported the way the host imports it (as the extension's package)."""
    folder = PROJECT_ROOT / "extensions" / folder_name
    manifest = read_manifest(folder)
    loader.import_entry_point(manifest, folder)
    return importlib.import_module(f"{loader.package_name(manifest, folder)}.{module}")


values = extension_module("xyz-plot", "values")
axes = extension_module("xyz-plot", "axes")
plan_module = extension_module("xyz-plot", "plan")


def axis(label: str, tab: str = "txt2img") -> int:
    return axes.axis_index(tab, label)


def xyz_args(x=("Nothing", ""), y=("Nothing", ""), z=("Nothing", ""), *, legend=True, lone=False, sub_grids=False,
             keep_random=False, margin=0) -> list:
    """A1111 1.10's 18 positional script_args."""
    args = []
    for label, text in (x, y, z):
        args += [axis(label), text, []]
    return args + [legend, lone, sub_grids, keep_random, False, False, False, margin, False]


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    data = tmp_path_factory.mktemp("scripts")
    checkpoints = data / "models" / "Stable-diffusion"
    checkpoints.mkdir(parents=True)
    for name, seed in (("tiny_a", 1), ("tiny_b", 2), ("tiny_c", 3)):
        write_tiny_sd15_single_file(checkpoints / f"{name}.safetensors", seed=seed)
    app = create_app(LaunchOptions(data_dir=str(data), nowebui=True, device="cpu"))
    yield app
    app.jobs.shutdown()


@pytest.fixture(scope="module")
def client(app):
    handle = start_server(build_server(app), "127.0.0.1", 0, log_level="warning")
    with httpx.Client(base_url=handle.url, timeout=120) as http:
        yield http
    handle.stop()


def base_request(**changes) -> GenerationRequest:
    fields = dict(prompt="a red circle on a blue background", width=64, height=64, steps=1, seed=1234,
                  sampler_name="Euler", save_images=True)
    return GenerationRequest(**{**fields, **changes})


def run_script(app, name: str, args: list, request: GenerationRequest | None = None, tab: str = "txt2img"):
    job = app.extensions.submit(request or base_request(), tab, script_name=name, script_args=args)
    return job.wait(120)


def saved(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.png"))


# ---------------------------------------------------------------------------------------------- value syntax


@pytest.mark.parametrize("kind, text, expected", [
    ("int", "1, 2, 5", [1, 2, 5]),
    ("int", "1-5", [1, 2, 3, 4, 5]),
    ("int", "1-5 (+2)", [1, 3, 5]),
    ("int", "10-1 (-3)", [10, 7, 4]),
    ("int", "1-10 [5]", [1, 3, 5, 7, 10]),
    ("int", "1-3, 10", [1, 2, 3, 10]),
    ("float", "0.5-1.5 (+0.5)", [0.5, 1.0, 1.5]),
    ("float", "0.5-1 [3]", [0.5, 0.75, 1.0]),
    ("float", "7, 7.5", [7.0, 7.5]),
    ("str", 'a, "b, c", d', ["a", "b, c", "d"]),
    ("str", "cat,  ,dog", ["cat", "dog"]),
    ("permutation", "a, b", [["a", "b"], ["b", "a"]]),
])
def test_value_syntax(kind, text, expected):
    parsed = values.parse_values(kind, text)
    assert parsed == (pytest.approx(expected) if kind == "float" else expected)


@pytest.mark.parametrize("kind, text", [("int", "abc"), ("int", "1-5 (+0)"), ("float", "nan"),
                                        ("int", "1-100000")])
def test_bad_values_are_errors(kind, text):
    with pytest.raises(values.AxisValueError):
        values.parse_values(kind, text)


def test_axis_list_keeps_a1111_indices():
    txt2img, img2img = axes.axes_for("txt2img"), axes.axes_for("img2img")
    assert [a.label for a in txt2img[:9]] == ["Nothing", "Seed", "Var. seed", "Var. strength", "Steps",
                                              "Hires steps", "CFG Scale", "Prompt S/R", "Prompt order"]
    assert txt2img[9].label == "Sampler" and txt2img[11].label == "Checkpoint name"
    assert [a.label for a in img2img[4:8]] == ["Steps", "CFG Scale", "Image CFG Scale", "Prompt S/R"]
    assert len(txt2img) == 42 and txt2img[-1].label == "Size"


def test_checkpoint_axis_is_the_outer_loop():
    """Cells in processing order: the checkpoint changes once, not once per seed (A1111's cost rule)."""
    app_view = _StubView()
    args = plan_module.parse_xyz_args(xyz_args(x=("Checkpoint name", "b, c"), y=("Seed", "1, 2, 3")))
    plan = plan_module.make_plan(base_request(), args, app_view)
    order = [plan.request_for(cell).checkpoint for cell in plan.cells()]
    assert order == ["b", "b", "b", "c", "c", "c"]
    assert sum(1 for before, after in zip(order, order[1:]) if before != after) == 1
    assert plan_module.loop_order([0.0, 0.0, 0.0]) == (2, 1, 0)  # no costly axis: X changes fastest (A1111)


class _StubView:
    def find_checkpoint(self, name):
        return name.strip()


# ---------------------------------------------------------------------------------------------- X/Y/Z plot


def test_xyz_steps_by_cfg_makes_a_labelled_2x2_grid(app):
    grids, images = app.paths.outputs_dir / "txt2img-grids", app.paths.outputs_dir / "txt2img-images"
    before_grids, before_images = len(saved(grids)), len(saved(images))
    result = run_script(app, XYZ, xyz_args(x=("Steps", "1, 2"), y=("CFG Scale", "3, 7"), lone=True))
    grid, cells = result.images[0], result.images[1:]
    assert len(cells) == 4 and all(cell.size == (64, 64) for cell in cells)
    assert grid.width > 128 and grid.height > 128  # 2×2 cells plus a label band on top and on the left
    band_top = np.asarray(grid.convert("L"))[: grid.height - 128, grid.width - 128:]
    band_left = np.asarray(grid.convert("L"))[grid.height - 128:, : grid.width - 128]
    assert band_top.min() < 128 and band_left.min() < 128  # text was drawn in both bands
    expected = [("Steps: 1", "CFG scale: 3.0"), ("Steps: 2", "CFG scale: 3.0"), ("Steps: 1", "CFG scale: 7.0"),
                ("Steps: 2", "CFG scale: 7.0")]  # X fastest, then Y
    for infotext, (steps, cfg) in zip(result.infotexts[1:], expected):
        assert steps in infotext and cfg in infotext and "Seed: 1234" in infotext
    grid_text = result.infotexts[0]
    assert 'Script: X/Y/Z plot, X Type: Steps, X Values: "1, 2", Y Type: CFG Scale, Y Values: "3, 7"' in grid_text
    assert grid_text.index("X Type") < grid_text.index("Version:")  # A1111 puts script keys before Version
    assert result.info["index_of_first_image"] == 1
    assert len(saved(images)) == before_images + 4  # every cell saved with its own infotext
    new_grids = saved(grids)[before_grids:]
    assert len(new_grids) == 1 and "X Type: Steps" in Image.open(new_grids[0]).info["parameters"]


def test_xyz_z_axis_gives_one_grid_per_value_and_a_super_grid(app):
    result = run_script(app, XYZ, xyz_args(x=("Steps", "1"), z=("Seed", "5, 6"), sub_grids=True))
    main, first, second = result.images
    assert first.size == second.size and main.width >= 2 * first.width and main.height > first.height
    assert "Z Type: Seed" in result.infotexts[0] and "Fixed Z Values: " in result.infotexts[0]
    assert "Seed: 5" in result.infotexts[1] and "Z Type" not in result.infotexts[1]
    assert "Seed: 6" in result.infotexts[2]


def test_xyz_prompt_sr_and_size(app):
    result = run_script(app, XYZ, xyz_args(x=("Prompt S/R", "red, green"), y=("Size", "64x96"), lone=True))
    prompts = [text.splitlines()[0] for text in result.infotexts[1:]]
    assert prompts == ["a red circle on a blue background", "a green circle on a blue background"]
    assert [image.size for image in result.images[1:]] == [(64, 96), (64, 96)]


def test_xyz_checkpoint_axis_switches_once_per_checkpoint(app):
    """Checkpoint cells run grouped: a switch per checkpoint value, not per cell (counted by the model manager)."""
    history = app.models.switch_history
    before = len(history)
    result = run_script(app, XYZ, xyz_args(x=("Seed", "1, 2"), y=("Checkpoint name", "tiny_b, tiny_c"), lone=True))
    assert [text.count("Model: tiny_b") for text in result.infotexts[1:]] == [1, 1, 0, 0]
    switched_to = [record.title.split(".")[0] for record in list(history)[before:]]
    assert switched_to == ["tiny_b", "tiny_c", "tiny_a"]  # the last cell restores the chosen checkpoint
    assert app.models.current.name == "tiny_a.safetensors"


def test_interrupt_stops_the_remaining_cells(app):
    job = app.extensions.submit(base_request(), "txt2img", script_name=XYZ,
                                script_args=xyz_args(x=("Seed", "1-30"), lone=True))
    deadline = time.monotonic() + 60
    while job.snapshot().job_no < 1 and time.monotonic() < deadline:  # the second cell has started
        time.sleep(0.01)
    app.jobs.interrupt()
    result = job.wait(60)
    assert result.interrupted and 1 <= len(result.images) - 1 < 30


def test_unsupported_axis_and_bad_values_are_refused_before_anything_runs(app):
    for args, message in ((xyz_args(x=("Sigma Churn", "1, 2")), "not supported"),
                          (xyz_args(x=("Steps", "one, two")), "not a whole number"),
                          (xyz_args(x=("Sampler", "Euler, Nope")), "unknown sampler"),
                          (xyz_args(x=("Prompt S/R", "purple, red")), "did not find"),
                          (xyz_args(x=("Hires steps", "1, 2")), "Hires. fix")):
        with pytest.raises(ValueError, match=message):
            app.extensions.submit(base_request(), "txt2img", script_name=XYZ, script_args=args)
    assert all(record.active for record in app.extensions.records() if record.name == "xyz-plot")


def test_xyz_over_http_with_a1111_script_args(client):
    script_args = [4, "1,2", [], 0, "", [], 0, "", [], True, False, False, False, False, False, False, 0, False]
    body = {"prompt": "a red circle", "width": 64, "height": 64, "steps": 1, "seed": 7, "sampler_name": "Euler",
            "script_name": "X/Y/Z plot", "script_args": script_args}
    response = client.post(f"{API}/txt2img", json=body)
    assert response.status_code == 200, response.text
    images = response.json()["images"]
    assert len(images) == 1  # the grid only (no "Include Sub Images")
    grid = Image.open(io.BytesIO(base64.b64decode(images[0])))
    assert grid.size[0] == 128 and grid.size[1] > 64 and "X Type: Steps" in grid.info["parameters"]
    unsupported = client.post(f"{API}/txt2img", json={**body, "script_args": [axis("Eta"), "0,1"]})
    assert unsupported.status_code == 422 and "Eta" in unsupported.text
    info = {entry["name"]: entry for entry in client.get(f"{API}/script-info").json()}
    assert len(info[XYZ]["args"]) == 18 and info[XYZ]["args"][0]["label"] == "X type"
    assert {"prompt matrix", "prompts from file or textbox", XYZ} <= set(client.get(f"{API}/scripts").json()["txt2img"])


# ---------------------------------------------------------------------------------------------- prompt matrix


def test_prompt_matrix_two_parts_make_four_images_and_a_grid(app):
    request = base_request(prompt="a circle|red|on blue", seed=3)
    result = run_script(app, "prompt matrix", [False, False, "positive", "comma", 0], request)
    grid, images = result.images[0], result.images[1:]
    assert len(images) == 4 and grid.width > 128 and grid.height > 128
    prompts = [text.splitlines()[0] for text in result.infotexts[1:]]
    assert prompts == ["a circle", "a circle, red", "a circle, on blue", "a circle, red, on blue"]
    assert all("Seed: 3" in text for text in result.infotexts[1:])
    different = run_script(app, "prompt matrix", [True, True, "positive", "space", 0],
                           base_request(prompt="a circle|red", seed=3))
    assert [t.splitlines()[0] for t in different.infotexts[1:]] == ["a circle", "red a circle"]
    assert "Seed: 3" in different.infotexts[1] and "Seed: 4" in different.infotexts[2]


# ------------------------------------------------------------------------------------------ prompts from file


def test_prompts_from_file_lines_and_overrides(app):
    text = 'a red circle\n\n--prompt "a blue square" --seed 5 --steps 2 --negative_prompt "green, yellow"\n'
    result = run_script(app, "prompts from file or textbox", [False, False, "start", text],
                        base_request(prompt="", seed=11))
    first, second = result.infotexts
    assert first.startswith("a red circle\nSteps: 1") and "Seed: 11" in first
    assert second.startswith("a blue square\nNegative prompt: green, yellow\nSteps: 2") and "Seed: 5" in second
    iterated = run_script(app, "prompts from file or textbox", [True, False, "end", "cat\ndog"],
                          base_request(prompt="a photo of a", seed=20))
    assert [t.splitlines()[0] for t in iterated.infotexts] == ["a photo of a cat", "a photo of a dog"]
    assert "Seed: 20" in iterated.infotexts[0] and "Seed: 21" in iterated.infotexts[1]


@pytest.mark.parametrize("line, message", [("--seeed 5", "unknown option"), ("--steps many", "int value"),
                                           ("--outpath_samples /tmp", "not allowed"),
                                           ("--prompt x --width 65", "multiple of 8")])
def test_prompts_from_file_bad_lines_are_refused(app, line, message):
    with pytest.raises(ValueError, match=message):
        app.extensions.submit(base_request(), "txt2img", script_name="prompts from file or textbox",
                              script_args=[False, False, "start", f"ok\n{line}"])


def test_prompts_from_file_bad_line_over_http_is_422(client):
    response = client.post(f"{API}/txt2img", json={"width": 64, "height": 64, "steps": 1,
                                                    "script_name": "Prompts from file or textbox",
                                                    "script_args": [False, False, "start", "--seed five"]})
    assert response.status_code == 422 and "line 1" in response.text
