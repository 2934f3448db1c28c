"""Prompt styles from styles.csv in A1111's format (columns name, prompt, negative_prompt).

A style text containing `{prompt}` wraps the user's prompt; otherwise it is appended after ", " (A1111 merge_prompts).
"""
from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

PROMPT_PLACEHOLDER = "{prompt}"


class UnknownStyleError(ValueError):
    """A requested style name is not in styles.csv; the message lists the available ones."""


@dataclass(frozen=True)
class PromptStyle:
    name: str
    prompt: str
    negative_prompt: str


def read_styles(path: Path) -> list[PromptStyle]:
    """Styles in file order; a missing file means no styles. Rows without a name are skipped."""
    if not path.is_file():
        return []
    styles = []
    with open(path, encoding="utf-8-sig", newline="") as file:
        for row in csv.DictReader(file, skipinitialspace=True):
            name = (row.get("name") or "").strip()
            if not name:
                continue
            # A1111 ≤ 1.5 files call the prompt column "text".
            prompt = row.get("prompt") if row.get("prompt") is not None else row.get("text")
            styles.append(PromptStyle(name, prompt or "", row.get("negative_prompt") or ""))
    return styles


def merge_prompt(style_text: str, prompt: str) -> str:
    if PROMPT_PLACEHOLDER in style_text:
        return style_text.replace(PROMPT_PLACEHOLDER, prompt)
    return ", ".join(part for part in (prompt, style_text) if part)


def apply_styles(prompt: str, negative_prompt: str, names: list[str], styles: list[PromptStyle]) -> tuple[str, str]:
    """(prompt, negative) with the named styles applied in order; unknown names raise UnknownStyleError."""
    by_name = {style.name: style for style in styles}
    for name in names:
        style = by_name.get(name)
        if style is None:
            available = ", ".join(by_name) or "none (styles.csv is empty or missing)"
            raise UnknownStyleError(f"unknown style {name!r}; available: {available}")
        prompt = merge_prompt(style.prompt, prompt)
        negative_prompt = merge_prompt(style.negative_prompt, negative_prompt)
    return prompt, negative_prompt
