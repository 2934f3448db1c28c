"""Scripts over the API, as A1111 has them: /scripts and /script-info listings, `script_name` + positional
`script_args` (a selectable script runs instead of the plain job), and `alwayson_scripts` ({name: {"args": [...]}}).

The scripts themselves live in the extension registry (app.extensions): core scripts such as "Poor man's
outpainting" and those of extensions. A1111 lists scripts by their lower-cased title and matches names in any case;
script_args shorter than a script's arguments keep its defaults for the rest.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import APIRouter

from modules.api.models import GenerationApiRequest, ScriptArg, ScriptInfo, ScriptsList
from modules.engine.request import GenerationRequest
from modules.extensions.api import IMG2IMG, TABS, TXT2IMG, Script
from modules.jobs import Job

if TYPE_CHECKING:
    from modules.app import App


def scripts_list(app: App) -> ScriptsList:
    """Selectable scripts per tab (always-on ones are not listed here, as in A1111)."""
    return ScriptsList(**{tab: [script.name for script in app.extensions.scripts(tab, always_on=False)]
                          for tab in TABS})


def script_arguments(script: Script) -> list[ScriptArg]:
    return [ScriptArg(label=arg.label, value=list(arg.value) if isinstance(arg.value, tuple) else arg.value,
                      minimum=arg.minimum, maximum=arg.maximum, step=arg.step,
                      choices=list(arg.choices) if arg.choices is not None else None) for arg in script.args]


def script_infos(app: App) -> list[ScriptInfo]:
    """/sdapi/v1/script-info: one entry per script and tab it shows in (A1111 ScriptInfo shape)."""
    return [ScriptInfo(name=script.name, is_alwayson=script.always_on, is_img2img=tab == IMG2IMG,
                       args=script_arguments(script))
            for tab in TABS for script in app.extensions.scripts(tab)]


def check_script_name(app: App, body: GenerationApiRequest, tab: str) -> None:
    """422 for an unknown script before any work (images are decoded after this)."""
    if body.script_name and body.script_name.strip() not in ("", "None"):
        app.extensions.find_script(body.script_name, tab)


def alwayson_applied(app: App, request: GenerationRequest, body: GenerationApiRequest, tab: str) -> GenerationRequest:
    """The request after the always-on scripts the body names; unknown names or bad args raise (→ 422)."""
    if not body.alwayson_scripts:
        return request
    return app.extensions.apply_alwayson(request, body.alwayson_scripts, tab)


def submit_generation(app: App, body: GenerationApiRequest, request: GenerationRequest, tab: str) -> Job:
    """Queue the job, or start the selected script on the request (its args are checked here: 422)."""
    return app.extensions.submit(request, tab, script_name=body.script_name, script_args=body.script_args,
                                 task_id=body.force_task_id)


def add_script_routes(router: APIRouter, app: App) -> None:
    @router.get("/scripts", response_model=ScriptsList, summary="Selectable scripts (lower-case titles)")
    def scripts() -> ScriptsList:
        return scripts_list(app)

    @router.get("/script-info", response_model=list[ScriptInfo], summary="Scripts and their positional script_args")
    def script_info() -> list[ScriptInfo]:
        return script_infos(app)

