"""Prompt matrix (A1111's built-in script, same title and script_args): `a cat|in a hat|on a mat` makes one image for
every combination of the parts after the first — 2^(parts−1) images — and a grid labelled with which parts each
column and row holds (the first half of the parts across, the rest down).

script_args: [put_at_start, different_seeds, prompt_type ("positive"/"negative"), variations_delimiter
("comma"/"space"), margin_size].
"""
from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

from modules.extensions.api import (
    AppView,
    GenerationRequest,
    GenerationResult,
    Registry,
    RequestError,
    Script,
    ScriptArg,
    ScriptContext,
    combine_results,
)

MAX_VARIABLE_PARTS = 10  # 2^10 = 1024 images
RANDOM_SEED_LIMIT = 4294967294
DELIMITERS = {"comma": ", ", "space": " "}
MARGIN_COLOUR = (255, 255, 255)


@dataclass(frozen=True)
class MatrixArgs:
    put_at_start: bool = False
    different_seeds: bool = False
    prompt_type: str = "positive"
    variations_delimiter: str = "comma"
    margin_size: int = 0


def split_parts(text: str) -> list[str]:
    return text.split("|")


def combinations(parts: Sequence[str], *, put_at_start: bool, delimiter: str) -> list[str]:
    """Prompt of combination c: the first part plus every part i ≥ 1 whose bit (i − 1) is set in c (A1111)."""
    base, variable = parts[0], parts[1:]
    prompts = []
    for combination in range(2 ** len(variable)):
        chosen = [text.strip().strip(",") for bit, text in enumerate(variable) if combination & (1 << bit)]
        prompts.append(delimiter.join(chosen + [base] if put_at_start else [base] + chosen))
    return prompts


def axis_labels(parts: Sequence[str]) -> tuple[list[str], list[str]]:
    """(column labels, row labels): A1111 puts the first ceil(n/2) variable parts across, the rest down; a label
    lists each part of its axis, an absent one as "no <part>" (A1111 strikes it through)."""
    variable = [part.strip().strip(",") for part in parts[1:]]
    boundary = (len(variable) + 1) // 2
    across, down = variable[:boundary], variable[boundary:]

    def labels(group: list[str]) -> list[str]:
        return ["\n".join(part if position & (1 << bit) else f"no {part}" for bit, part in enumerate(group))
                for position in range(2 ** len(group))]

    return labels(across), labels(down)


def with_margin(image: Image.Image, margin: int) -> Image.Image:
    if margin <= 0:
        return image
    framed = Image.new("RGB", (image.width + margin, image.height + margin), MARGIN_COLOUR)
    framed.paste(image.convert("RGB"), (margin // 2, margin // 2))
    return framed


class PromptMatrix(Script):
    title = "Prompt matrix"
    args = (
        ScriptArg("Put variable parts at start of prompt", False),
        ScriptArg("Use different seed for each picture", False),
        ScriptArg("Select prompt", "positive", choices=("positive", "negative")),
        ScriptArg("Select joining char", "comma", choices=tuple(DELIMITERS)),
        ScriptArg("Grid margins (px)", 0, minimum=0, maximum=500, step=2),
    )

    def parse_args(self, values: Sequence[Any], app: AppView) -> MatrixArgs:
        return MatrixArgs(*super().parse_args(values, app))

    def validate(self, request: GenerationRequest, args: MatrixArgs, app: AppView) -> None:
        variable = len(split_parts(self._source(request, args))) - 1
        if variable > MAX_VARIABLE_PARTS:
            raise RequestError(f"Prompt matrix: {variable} variable parts would make {2 ** variable} images; "
                               f"at most {MAX_VARIABLE_PARTS} parts")

    @staticmethod
    def _source(request: GenerationRequest, args: MatrixArgs) -> str:
        return request.prompt if args.prompt_type == "positive" else request.negative_prompt

    def requests(self, request: GenerationRequest, args: MatrixArgs) -> list[GenerationRequest]:
        """One single-image request per combination; seeds fixed first (A1111 fix_seed), +i with different seeds."""
        seed = random.randrange(RANDOM_SEED_LIMIT) if request.seed == -1 else request.seed
        subseed = random.randrange(RANDOM_SEED_LIMIT) if request.subseed == -1 else request.subseed
        prompts = combinations(split_parts(self._source(request, args)), put_at_start=args.put_at_start,
                               delimiter=DELIMITERS[args.variations_delimiter])
        field = "prompt" if args.prompt_type == "positive" else "negative_prompt"
        return [request.replace(**{field: prompt}, seed=seed + (index if args.different_seeds else 0),
                                subseed=subseed, batch_size=1, n_iter=1, save_grid=False)
                for index, prompt in enumerate(prompts)]

    def run(self, ctx: ScriptContext, request: GenerationRequest, args: MatrixArgs) -> GenerationResult:
        jobs = self.requests(request, args)
        ctx.set_job_count(len(jobs))
        results = []
        for job in jobs:
            if ctx.interrupted():
                break
            results.append(ctx.run(job))
        images = [image for result in results for image in result.images]
        if not images:  # interrupted before the first image
            return combine_results(results) if results else GenerationResult(
                request=request, images=[], infotexts=[], seeds=[], subseeds=[], prompts=[], negative_prompts=[],
                interrupted=True)
        parts = split_parts(self._source(request, args))
        columns, rows = axis_labels(parts)
        cells = [with_margin(image, args.margin_size) for image in images]
        cells += [Image.new("RGB", cells[0].size)] * (len(jobs) - len(cells))  # interrupted: black cells
        grid = ctx.make_grid(cells, rows=len(rows), column_labels=columns if len(columns) > 1 else None,
                             row_labels=rows if len(rows) > 1 else None)
        combined = combine_results(results)
        infotext = combined.infotexts[0]
        ctx.save_image(grid, infotext, grid=True)
        # A1111: the grid is the first image, with the first image's infotext
        combined.images.insert(0, grid)
        combined.infotexts.insert(0, infotext)
        combined.seeds.insert(0, combined.seeds[0])
        combined.subseeds.insert(0, combined.subseeds[0])
        combined.prompts.insert(0, request.prompt)
        combined.negative_prompts.insert(0, request.negative_prompt)
        combined.info.update(infotexts=list(combined.infotexts), all_seeds=list(combined.seeds),
                             index_of_first_image=1)
        return combined


def register(registry: Registry) -> None:
    registry.add_script(PromptMatrix())
