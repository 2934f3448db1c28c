"""Prompts from file or textbox (A1111's built-in script, same title and script_args): one job per line, each line a
prompt or a list of `--option value` overrides of the request (see lines.py).

script_args: [checkbox_iterate ("Iterate seed every line"), checkbox_iterate_batch ("Use same random seed for all
lines"), prompt_position ("start"/"end": where a line's prompt goes relative to the prompt box), prompt_txt].
"""
from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modules.extensions.api import (
    AppView,
    GenerationRequest,
    GenerationResult,
    Registry,
    RequestError,
    Script,
    ScriptArg,
    ScriptContext,
    ScriptUiContext,
    combine_results,
)

from .lines import parse_line, prompt_lines

RANDOM_SEED_LIMIT = 4294967294
MAX_UPLOAD_BYTES = 1024 * 1024
PLAIN_FIELDS = ("seed", "subseed", "subseed_strength", "seed_resize_from_h", "seed_resize_from_w", "batch_size",
                "n_iter", "steps", "cfg_scale", "width", "height")


@dataclass(frozen=True)
class PromptsArgs:
    iterate_seed: bool
    same_seed: bool
    prompt_position: str
    lines: tuple[dict[str, Any], ...]  # parsed options per line


def _match(value: str, names: list[str], what: str) -> str:
    for name in names:
        if name.lower() == value.strip().lower():
            return name
    raise RequestError(f"unknown {what} {value!r}; available: {', '.join(names)}")


def _joined(line_text: str, box_text: str, position: str) -> str:
    """A1111: a line's prompt goes before ("start") or after ("end") the prompt box's text, with a space."""
    if not box_text:
        return line_text
    return f"{line_text} {box_text}" if position == "start" else f"{box_text} {line_text}"


def apply_line(base: GenerationRequest, options: dict[str, Any], app: AppView, position: str) -> GenerationRequest:
    """The request for one line: its overrides on top of the tab's request."""
    changes: dict[str, Any] = {name: options[name] for name in PLAIN_FIELDS if name in options}
    if "sampler_name" in options:
        changes["sampler_name"] = _match(options["sampler_name"], app.sampler_names(), "sampler")
    if "sampler_index" in options:
        names = app.sampler_names()
        if not 0 <= options["sampler_index"] < len(names):
            raise RequestError(f"--sampler_index must be 0..{len(names) - 1}, got {options['sampler_index']}")
        changes["sampler_name"] = names[options["sampler_index"]]
    if "scheduler" in options:
        changes["scheduler"] = _match(options["scheduler"], app.scheduler_names(), "schedule type")
    if "sd_model" in options:
        changes["checkpoint"] = app.find_checkpoint(options["sd_model"])
    if "do_not_save_samples" in options:
        changes["save_images"] = base.save_images and not options["do_not_save_samples"]
    if options.get("prompt"):
        changes["prompt"] = _joined(options["prompt"], base.prompt, position)
    if options.get("negative_prompt"):
        changes["negative_prompt"] = _joined(options["negative_prompt"], base.negative_prompt, position)
    return base.replace(**changes)


def line_requests(request: GenerationRequest, args: PromptsArgs, app: AppView) -> list[GenerationRequest]:
    """Every line's request; seeds as A1111: one random seed for all lines when either seed box is ticked, advanced
    by batch size × batch count per line with "Iterate seed every line"."""
    seed = request.seed
    if (args.iterate_seed or args.same_seed) and seed == -1:
        seed = random.randrange(RANDOM_SEED_LIMIT)
    requests = []
    for options in args.lines:
        base = request.replace(seed=seed, save_grid=False)  # A1111 sets do_not_save_grid for every line
        requests.append(apply_line(base, options, app, args.prompt_position))
        if args.iterate_seed:
            seed += request.batch_size * request.n_iter
    return requests


class PromptsFromFile(Script):
    title = "Prompts from file or textbox"
    args = (
        ScriptArg("Iterate seed every line", False),
        ScriptArg("Use same random seed for all lines", False),
        ScriptArg("Insert prompts at the", "start", choices=("start", "end")),
        ScriptArg("List of prompt inputs", "", lines=6),
    )

    def parse_args(self, values: Sequence[Any], app: AppView) -> PromptsArgs:
        iterate_seed, same_seed, position, text = super().parse_args(values, app)
        lines = tuple(parse_line(number, line) for number, line in enumerate(prompt_lines(text), start=1))
        return PromptsArgs(iterate_seed, same_seed, position, lines)

    def validate(self, request: GenerationRequest, args: PromptsArgs, app: AppView) -> None:
        if not args.lines:
            raise RequestError("Prompts from file or textbox: the list of prompts is empty")
        for number, line_request in enumerate(line_requests(request, args, app), start=1):
            try:
                line_request.validate()
            except ValueError as error:
                raise RequestError(f"line {number}: {error}") from None

    def run(self, ctx: ScriptContext, request: GenerationRequest, args: PromptsArgs) -> GenerationResult:
        requests = line_requests(request, args, ctx.app)
        ctx.set_job_count(len(requests))
        results = []
        for line_request in requests:
            if ctx.interrupted():
                break
            results.append(ctx.run(line_request))
        if not results:
            return GenerationResult(request=request, images=[], infotexts=[], seeds=[], subseeds=[], prompts=[],
                                    negative_prompts=[], interrupted=True)
        return combine_results(results)

    def ui(self, ctx: ScriptUiContext) -> list[Any]:
        import gradio as gr  # the UI only

        iterate, same, position, text = ctx.components_for(self.args)
        upload = gr.File(label="Upload prompt inputs", file_types=[".txt"], type="filepath",
                         elem_id=f"{ctx.elem_prefix}_file")
        upload.upload(read_upload, inputs=upload, outputs=text, show_progress="hidden")
        return [iterate, same, position, text]


def read_upload(path: str | None) -> str:
    """A text file's content for the textbox (A1111 decodes UTF-8 and drops what does not decode)."""
    if not path:
        return ""
    data = Path(path).read_bytes()[:MAX_UPLOAD_BYTES]
    return data.decode("utf-8", errors="ignore")


def register(registry: Registry) -> None:
    registry.add_script(PromptsFromFile())
