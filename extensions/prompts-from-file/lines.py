"""Lines of the "Prompts from file or textbox" script: one job per non-empty line; a line starting with `--` is a
list of A1111 options (`--prompt "a cat" --seed 5 --steps 10 --negative_prompt "blurry"`), any other line is a
prompt (as in A1111, whose option parser only succeeds on such lines).

`--prompt` / `--negative_prompt` take every word up to the next `--option` (quotes optional); the others take one
value. Unlike A1111 (which then uses the whole line as the prompt), an option line that does not parse is an error
naming the line, so a typo never turns into a prompt.
"""
from __future__ import annotations

import shlex
from collections.abc import Callable
from typing import Any

MAX_LINES = 1000


class LineError(ValueError):
    """A line's options do not parse; the message names the line number and the option."""


def _bool(text: str) -> bool:
    return text.strip().lower() == "true"  # A1111: anything but "true" is false


def _int(text: str) -> int:
    return int(text)


def _float(text: str) -> float:
    return float(text)


# option → converter; the A1111 names (modules/scripts/prompts_from_file.py prompt_tags) this server can apply
OPTION_TYPES: dict[str, Callable[[str], Any]] = {
    "sd_model": str, "prompt": str, "negative_prompt": str, "sampler_name": str, "scheduler": str,
    "seed": _int, "subseed": _int, "subseed_strength": _float, "seed_resize_from_h": _int,
    "seed_resize_from_w": _int, "sampler_index": _int, "batch_size": _int, "n_iter": _int, "steps": _int,
    "cfg_scale": _float, "width": _int, "height": _int, "restore_faces": _bool, "tiling": _bool,
    "do_not_save_samples": _bool, "do_not_save_grid": _bool,
}
# A1111 options refused here: output folders from a text box would let a request write anywhere on disk.
REFUSED_OPTIONS = {"outpath_samples": "choosing output folders per line is not allowed",
                   "outpath_grids": "choosing output folders per line is not allowed",
                   "styles": "styles are not supported per line; put the style text into --prompt"}
IGNORED_OPTIONS = ("prompt_for_display",)


def prompt_lines(text: str) -> list[str]:
    lines = [line.strip() for line in (text or "").splitlines()]
    lines = [line for line in lines if line]
    if len(lines) > MAX_LINES:
        raise LineError(f"at most {MAX_LINES} lines, got {len(lines)}")
    return lines


def parse_options(line: str) -> dict[str, Any]:
    """A1111 cmdargs: `--name value` pairs (shell quoting); raises ValueError with what is wrong."""
    words = shlex.split(line)
    options: dict[str, Any] = {}
    position = 0
    while position < len(words):
        word = words[position]
        if not word.startswith("--"):
            raise ValueError(f"expected an --option, got {word!r}")
        if position + 1 >= len(words):
            raise ValueError(f"{word} needs a value")
        name = word[2:]
        if name in ("prompt", "negative_prompt"):
            position += 1
            collected = [words[position]]
            position += 1
            while position < len(words) and not words[position].startswith("--"):
                collected.append(words[position])
                position += 1
            options[name] = " ".join(collected)
            continue
        if name in REFUSED_OPTIONS:
            raise ValueError(f"{word}: {REFUSED_OPTIONS[name]}")
        if name not in OPTION_TYPES and name not in IGNORED_OPTIONS:
            known = ", ".join(f"--{option}" for option in OPTION_TYPES)
            raise ValueError(f"unknown option {word}; known: {known}")
        value = words[position + 1]
        if name in OPTION_TYPES:
            try:
                options[name] = OPTION_TYPES[name](value)
            except ValueError:
                raise ValueError(f"{word} needs a {OPTION_TYPES[name].__name__.strip('_')} value, got {value!r}") \
                    from None
        position += 2
    return options


def parse_line(number: int, line: str) -> dict[str, Any]:
    """The line's options, or {"prompt": line} for a plain prompt."""
    if not line.startswith("--"):
        return {"prompt": line}
    try:
        return parse_options(line)
    except ValueError as error:
        raise LineError(f"line {number}: {error}  ({line[:120]})") from None
