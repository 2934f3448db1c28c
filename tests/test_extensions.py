"""The extension registry: manifests, isolated loading, hooks around a real (tiny-model) job, error isolation,
routes, settings, scripts over HTTP and from the UI's form, and the worked example extensions/example-hello."""
from __future__ import annotations

import base64
import io
import json
import textwrap
from pathlib import Path

import gradio as gr
import httpx
import pytest
from PIL import Image

from modules.engine.request import GenerationRequest, RequestError
from modules.extensions.api import REGISTRY_VERSION, ScriptArg
from modules.extensions.manifest import ManifestError, parse_manifest, read_manifest
from modules.extensions.registry import RegistrationError, checked_prefix
from modules.extensions.state import STATE_FILE_NAME
from modules.jobs import Job
from modules.settings import Settings, load_settings
from modules.ui import extensions_form, extensions_tab, settings_tab
from modules.ui.scripts_form import SCRIPT_FIELD, submit_with_scripts
from modules.ui.txt2img_form import default_form_values, request_from_form
from tests.fixtures.tiny_models import write_tiny_sd15_single_file
from tests.test_api import API, SMALL, serve_app, txt2img


MANIFEST = """name = "{name}"
version = "0.1.0"
registry_version = {version}
entry_point = "main:register"
{extra}
"""

# Records every hook (and an always-on script) and serves what it saw under /recorder/events.
RECORDER = '''
from fastapi import APIRouter
from modules.extensions.api import Script

class Tag(Script):
    title = "Recorder tag"
    always_on = True
    def parse_args(self, values, app):
        (tag,) = values
        if not isinstance(tag, str) or not tag:
            raise ValueError("Recorder tag needs a non-empty string")
        return tag
    def process(self, request, tag):
        return request.replace(extra_params={**request.extra_params, "Tag": tag})

def register(registry):
    events = []
    registry.before_job(lambda request: events.append("before_job"))
    registry.on_step(lambda state: events.append(f"on_step {state.step}/{state.steps}"))
    registry.after_job(lambda result: events.append(f"after_job {len(result.images)}"))
    registry.on_image_saved(lambda path, infotext: events.append(f"on_image_saved {path.suffix}"))
    router = APIRouter()
    router.get("/events")(lambda: list(events))
    router.post("/clear")(lambda: events.clear())
    registry.add_api_routes("recorder", router)
    registry.add_script(Tag())
'''
RAISES_BEFORE_JOB = '''
def register(registry):
    def broken(request):
        raise RuntimeError("before_job is broken")
    registry.before_job(broken)
'''
RAISES_ON_STEP = '''
def register(registry):
    def broken(state):
        raise KeyError("on_step is broken")
    registry.on_step(broken)
'''
IMPORT_ERROR = "import module_that_does_not_exist_anywhere\n\ndef register(registry):\n    pass\n"
TAKES_CORE_ROUTE = '''
from fastapi import APIRouter

def register(registry):
    registry.add_settings("Never", {"kept": True})
    registry.add_api_routes("sdapi/v1", APIRouter())
'''
NOTHING = "def register(registry):\n    pass\n"


def write_extension(root: Path, name: str, source: str, *, version: int = REGISTRY_VERSION, extra: str = "") -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "extension.toml").write_text(MANIFEST.format(name=name, version=version, extra=extra), encoding="utf-8")
    (folder / "main.py").write_text(textwrap.dedent(source), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("webui")
    write_tiny_sd15_single_file(data / "models" / "Stable-diffusion" / "tiny.safetensors", seed=1)
    root = data / "extensions"
    write_extension(root, "recorder", RECORDER)
    write_extension(root, "raises-before-job", RAISES_BEFORE_JOB)
    write_extension(root, "raises-on-step", RAISES_ON_STEP)
    write_extension(root, "import-error", IMPORT_ERROR)
    write_extension(root, "takes-core-route", TAKES_CORE_ROUTE)
    write_extension(root, "from-the-future", NOTHING, version=REGISTRY_VERSION + 1)
    write_extension(root, "needs-a-package", NOTHING, extra='requirements = ["no-such-package-for-webui-tests>=1"]')
    write_extension(root, "switched-off", NOTHING)
    (root / "bad-manifest").mkdir()
    (root / "bad-manifest" / "extension.toml").write_text('name = "bad manifest"\n', encoding="utf-8")
    (data / STATE_FILE_NAME).write_text(json.dumps({"enabled": {"example-hello": True, "switched-off": False}}))
    app, handle = serve_app(data)
    with httpx.Client(base_url=handle.url, timeout=120) as client:
        yield client, app
    handle.stop()
    app.jobs.shutdown()


def statuses(client: httpx.Client) -> dict[str, dict]:
    return {item["name"]: item for item in client.get(f"{API}/extensions").json()}


def decode(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


# ------------------------------------------------------------------------------------------------- manifests


def test_manifest_fields_are_parsed_and_validated(tmp_path):
    folder = write_extension(tmp_path, "ok", NOTHING, extra='requirements = ["qrcode>=7"]\nenabled_by_default = false')
    manifest = read_manifest(folder)
    assert (manifest.name, manifest.version, manifest.registry_version) == ("ok", "0.1.0", REGISTRY_VERSION)
    assert (manifest.entry_module, manifest.entry_function) == ("main", "register")
    assert manifest.requirements == ("qrcode>=7",) and manifest.enabled_by_default is False
    (tmp_path / "json").mkdir()
    (tmp_path / "json" / "extension.json").write_text(json.dumps(
        {"name": "js", "version": "2", "registry_version": 1, "entry_point": "pkg.mod:setup"}))
    assert read_manifest(tmp_path / "json").entry_module == "pkg.mod"
    good = {"name": "x", "version": "1", "registry_version": 1, "entry_point": "m:f"}
    for change, message in (({"name": "../x"}, "name"), ({"entry_point": "m.f"}, "entry_point"),
                            ({"registry_version": "1"}, "registry_version"),
                            ({"requirements": "torch"}, "requirements"),
                            ({"version": ""}, "version"), ({"enabled_by_default": "no"}, "enabled_by_default")):
        with pytest.raises(ManifestError, match=message):
            parse_manifest({**good, **change})
    with pytest.raises(ManifestError, match="lacks entry_point"):
        parse_manifest({"name": "x", "version": "1", "registry_version": 1})
    with pytest.raises(ManifestError, match="no extension.toml"):
        read_manifest(tmp_path)


def test_api_prefixes_cannot_take_core_paths():
    assert checked_prefix("/hello/") == "hello" and checked_prefix("sdapi/hello") == "sdapi/hello"
    for prefix in ("sdapi/v1", "sdapi/v1/extra", "docs", "", "../x", "gradio_api", "a b", "sdapi"):
        with pytest.raises(RegistrationError):
            checked_prefix(prefix)


def test_script_args_are_checked_positionally():
    count = ScriptArg("Count", 2, minimum=1, maximum=8)
    assert count.check(3.0) == 3 and count.check(None) == 2
    for bad in (9, 2.5, True, "3"):
        with pytest.raises(RequestError, match="Count"):
            count.check(bad)
    assert ScriptArg("Sides", ["left"], choices=("left", "right")).check("RIGHT") == ["right"]


def test_a_scripts_jobs_share_one_progress_bar():
    job = Job(GenerationRequest(), series=(1, 3))  # the second of a script's three jobs
    job.begin_pass(job_no=1, job_count=2, steps=10, label="Batch 2")
    job.on_step(5, latents=None)
    snapshot = job.snapshot()
    assert (snapshot.job_no, snapshot.job_count) == (3, 6)
    assert snapshot.fraction == pytest.approx((3 + 0.5) / 6)


# --------------------------------------------------------------------------------------- loading, isolation


def test_broken_extensions_are_disabled_with_their_reason(server):
    client, _ = server
    listed = statuses(client)
    assert listed["recorder"]["status"] == "enabled" and listed["example-hello"]["enabled"] is True
    assert "ModuleNotFoundError" in listed["import-error"]["error"] and listed["import-error"]["status"] == "failed"
    assert "registry version 2" in listed["from-the-future"]["error"]
    assert "no-such-package-for-webui-tests" in listed["needs-a-package"]["error"]
    assert "core path /sdapi/v1" in listed["takes-core-route"]["error"]
    assert "invalid manifest" in listed["bad-manifest"]["error"]
    assert listed["switched-off"]["status"] == "disabled"
    assert set(listed["recorder"]) >= {"name", "remote", "branch", "commit_hash", "version", "commit_date", "enabled"}


def test_a_failed_entry_point_leaves_nothing_registered(server):
    _, app = server
    with pytest.raises(Exception, match="unknown setting"):
        app.settings.value("takes-core-route.kept")


def test_hooks_fire_in_order_and_raising_hooks_disable_only_their_extension(server):
    client, app = server
    client.post("/recorder/clear")
    body = txt2img(client, save_images=True)
    events = client.get("/recorder/events").json()
    assert events == ["before_job", "on_step 1/2", "on_step 2/2", "after_job 1", "on_image_saved .png"]
    assert len(body["images"]) == 1  # the job went on without the broken hooks
    listed = statuses(client)
    assert "before_job raised RuntimeError: before_job is broken" in listed["raises-before-job"]["error"]
    assert "on_step raised KeyError" in listed["raises-on-step"]["error"]
    assert listed["raises-on-step"]["status"] == "failed" and listed["recorder"]["status"] == "enabled"
    assert len(txt2img(client)["images"]) == 1  # and the next job too


def test_disabling_is_saved_and_stops_hooks_at_once(server):
    client, app = server
    app.extensions.set_enabled("recorder", False)
    try:
        client.post("/recorder/clear")  # routes stay until a restart; hooks stop now
        txt2img(client)
        assert client.get("/recorder/events").json() == []
        saved = json.loads((app.paths.data_dir / STATE_FILE_NAME).read_text())["enabled"]
        assert saved["recorder"] is False and saved["switched-off"] is False
        assert "recorder tag" not in [item["name"] for item in client.get(f"{API}/script-info").json()]
    finally:
        app.extensions.set_enabled("recorder", True)
    message = extensions_form.apply_enabled(app, extensions_form.enabled_names(app))  # Apply with nothing unticked
    assert "raises-before-job enabled again" in message and app.extensions.record("raises-before-job").active
    txt2img(client)
    assert app.extensions.record("raises-before-job").status == "failed"  # it raised again: off again


# ---------------------------------------------------------------------------------------- always-on scripts


def test_alwayson_scripts_take_their_args_by_name(server):
    client, _ = server
    body = txt2img(client, alwayson_scripts={"RECORDER TAG": {"args": ["blue"]}})
    assert "Tag: blue" in json.loads(body["info"])["infotexts"][0]
    for scripts, message in (({"recorder tag": {"args": [""]}}, "non-empty"), ({"nope": {"args": []}}, "nope")):
        response = client.post(f"{API}/txt2img", json={**SMALL, "alwayson_scripts": scripts})
        assert response.status_code == 422 and message in response.json()["detail"]


# ---------------------------------------------------------------------------------------- the example extension


def test_example_extension_adds_its_greeting_route_and_settings(server, tmp_path):
    client, app = server
    body = txt2img(client)
    assert "Greeting: Hello" in json.loads(body["info"])["infotexts"][0]
    assert client.get("/hello/status").json()["greeting"] == "Hello"
    assert app.settings.value("example-hello.greeting") == "Hello"
    response = client.post(f"{API}/options", json={"example-hello.greeting": "Bonjour"})
    assert response.status_code == 200, response.text
    try:
        assert client.get(f"{API}/options").json()["example-hello.greeting"] == "Bonjour"
        assert "Greeting: Bonjour" in json.loads(txt2img(client)["info"])["infotexts"][0]
        saved = load_settings(app.paths.config_file)  # persisted with the app settings
        assert saved.value("example-hello.greeting") == "Bonjour"
        assert Settings().with_extension_defaults({"example-hello.greeting": "Hello"}).value(
            "example-hello.greeting") == "Hello"
        assert saved.with_extension_defaults({"example-hello.greeting": "Hello"}).value(
            "example-hello.greeting") == "Bonjour"
        bad = client.post(f"{API}/options", json={"example-hello.add_to_infotext": "yes"})
        assert bad.status_code == 422
    finally:
        app.update_settings({"example-hello.greeting": "Hello"})


def test_example_extension_tab_settings_and_static_files_in_the_ui(server):
    _, app = server
    with gr.Blocks() as blocks:
        with gr.Tabs():
            extensions_tab.build_extension_tabs(app)
        settings = settings_tab.build_settings(app)
    ids = {block.elem_id for block in blocks.blocks.values() if getattr(block, "elem_id", None)}
    assert {"example_hello_greeting", "example_hello_refresh", "setting_example_hello_greeting"} <= ids
    assert "example-hello.add_to_infotext" in list(settings.fields)
    assert [path.name for path in app.extensions.static_files(".css")] == ["hello.css"]
    assert "takes-core-route" not in {section.extension for section in app.extensions.settings_sections()}


# ------------------------------------------------------------------------------------------ selectable scripts


def test_scripts_are_listed_with_their_arguments(server):
    client, _ = server
    listed = client.get(f"{API}/scripts").json()
    assert "hello seeds" in listed["txt2img"] and "hello seeds" in listed["img2img"]
    assert "poor man's outpainting" in listed["img2img"] and "recorder tag" not in listed["txt2img"]
    infos = [item for item in client.get(f"{API}/script-info").json() if item["name"] == "hello seeds"]
    assert sorted(item["is_img2img"] for item in infos) == [False, True]
    assert infos[0]["args"] == [{"label": "Images", "value": 2, "minimum": 1, "maximum": 8, "step": 1,
                                 "choices": None}]
    always = [item for item in client.get(f"{API}/script-info").json() if item["name"] == "recorder tag"]
    assert always and all(item["is_alwayson"] for item in always)


def test_script_name_runs_the_script_over_http(server):
    client, _ = server
    body = txt2img(client, script_name="HELLO SEEDS", script_args=[2], seed=7)
    info = json.loads(body["info"])
    assert len(body["images"]) == 3  # the labelled grid first, then one image per seed
    assert info["all_seeds"] == [7, 8] and len(info["infotexts"]) == 3
    assert decode(body["images"][0]).size[0] == 2 * 64 and decode(body["images"][0]).size[1] > 64
    for fields, message in (({"script_name": "hello seeds", "script_args": [9]}, "between 1 and 8"),
                            ({"script_name": "hello seeds", "script_args": [1, 2]}, "takes 1"),
                            ({"script_name": "no such script"}, "Hello seeds")):
        response = client.post(f"{API}/txt2img", json={**SMALL, **fields})
        assert response.status_code == 422 and message in response.json()["detail"], response.text


def test_the_ui_generate_routes_to_the_selected_script(server):
    _, app = server
    values = {**default_form_values(64), "steps": 2, "seed": 3, "sampler_name": "Euler",
              SCRIPT_FIELD: "Hello seeds", "script_args.hello seeds.0": 2}
    plain_calls = []
    job = submit_with_scripts(app, "txt2img", values, request_from_form, plain_calls.append)
    result = job.wait(timeout=120)
    assert plain_calls == [] and result.seeds == [3, 4] and result.grid is not None
    submit_with_scripts(app, "txt2img", {**values, SCRIPT_FIELD: "None"}, request_from_form, plain_calls.append)
    assert len(plain_calls) == 1  # no script and no always-on inputs: the tab's own submit
