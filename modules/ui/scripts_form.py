"""The Script dropdown's values → a script run (gradio-free; tests call these directly).

Script inputs are form fields named "script_args.<script name>.<index>" (always-on scripts:
"alwayson_args.<script name>.<index>"); their values reach the script positionally, exactly as the API's
`script_args` / `alwayson_scripts` do, through the same app.extensions calls.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from modules.engine.request import GenerationRequest, RequestError
from modules.extensions.api import Script
from modules.extensions.host import NO_SCRIPT
from modules.jobs import Job

if TYPE_CHECKING:
    from modules.app import App

SCRIPT_FIELD = "script_name"
BATCH_MODE = "batch"  # img2img's Batch mode runs its own jobs; scripts do not apply there

RequestBuilder = Callable[[Mapping[str, Any]], GenerationRequest]
Submit = Callable[[dict[str, Any]], Any]


def arg_field(script: Script, index: int) -> str:
    kind = "alwayson_args" if script.always_on else "script_args"
    return f"{kind}.{script.name}.{index}"


def script_values(values: Mapping[str, Any], script: Script) -> list[Any]:
    """The script's inputs in order (as many as its UI built)."""
    collected, index = [], 0
    while arg_field(script, index) in values:
        collected.append(values[arg_field(script, index)])
        index += 1
    return collected


def alwayson_values(values: Mapping[str, Any], scripts: Sequence[Script]) -> dict[str, list[Any]]:
    """{name: args} of the always-on scripts that have inputs in this form."""
    return {script.name: script_values(values, script) for script in scripts if arg_field(script, 0) in values}


def selected_script(values: Mapping[str, Any]) -> str:
    return str(values.get(SCRIPT_FIELD) or NO_SCRIPT)


def submit_with_scripts(app: App, tab: str, values: dict[str, Any], build_request: RequestBuilder,
                        plain_submit: Submit) -> Job | Any:
    """Generate: with no script and no always-on inputs, the tab's own submit; else the request with the always-on
    scripts applied, queued or handed to the selected script (a ScriptJob the gallery follows like any job)."""
    name = selected_script(values)
    always_on = alwayson_values(values, app.extensions.scripts(tab, always_on=True))
    if name == NO_SCRIPT and not always_on:
        return plain_submit(values)
    if values.get("mode") == BATCH_MODE:
        if name != NO_SCRIPT:
            raise RequestError(f"Script {name!r} cannot run in Batch mode; set Script to None")
        return plain_submit(values)
    app.models.model  # noqa: B018 -- the property raises NoCheckpointError (with instructions) before queueing
    request = build_request(values)
    if always_on:
        request = app.extensions.apply_alwayson(request, always_on, tab)
    if name == NO_SCRIPT:
        return app.extensions.submit(request, tab)
    script = app.extensions.find_script(name, tab)
    return app.extensions.submit(request, tab, script_name=name, script_args=script_values(values, script))


def scripted_submit(app: App, tab: str, build_request: RequestBuilder, plain_submit: Submit) -> Submit:
    """The tab's submit function, with scripts (what the tab passes to generation.wire_generate)."""
    return lambda values: submit_with_scripts(app, tab, values, build_request, plain_submit)
