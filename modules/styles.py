"""Prompt styles: styles.csv in A1111's format (columns name, prompt, negative_prompt), read, edited and applied.

A style text containing `{prompt}` wraps the user's prompt; otherwise it is appended after ", " (A1111
merge_prompts). The styled prompt is what the engine sees and what the infotext records; `extract_styles` undoes
it for pasting (A1111's "Styles array" on paste), so an image's infotext brings its styles back.
"""
from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path

PROMPT_PLACEHOLDER = "{prompt}"
CSV_COLUMNS = ("name", "prompt", "negative_prompt")
MAX_STYLE_NAME = 200


class UnknownStyleError(ValueError):
    """A requested style name is not in styles.csv; the message lists the available ones."""


class StyleEditError(ValueError):
    """A style cannot be saved or deleted as asked (empty name, name taken, no such style)."""


@dataclass(frozen=True)
class PromptStyle:
    name: str
    prompt: str
    negative_prompt: str


# ---------------------------------------------------------------------------------------------------- the file


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


def styles_csv_text(styles: list[PromptStyle]) -> str:
    """The file content A1111 writes: a header, then one quoted-as-needed row per style."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for style in styles:
        writer.writerow((style.name, style.prompt, style.negative_prompt))
    return buffer.getvalue()


def write_styles(path: Path, styles: list[PromptStyle]) -> None:
    """Temp file + fsync + os.replace, so a crash never leaves a half-written styles.csv (security notes §7)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp")
    try:
        with open(temp, "w", encoding="utf-8", newline="") as file:
            file.write(styles_csv_text(styles))
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    finally:
        if temp.exists():
            temp.unlink()


def save_style(path: Path, style: PromptStyle, *, replaces: str | None = None) -> list[PromptStyle]:
    """Add or overwrite `style` (renaming `replaces` when given); keeps the file order. Returns the new list."""
    name = style.name.strip()
    if not name:
        raise StyleEditError("a style needs a name")
    if len(name) > MAX_STYLE_NAME:
        raise StyleEditError(f"style names are at most {MAX_STYLE_NAME} characters")
    style = PromptStyle(name, style.prompt, style.negative_prompt)
    styles = read_styles(path)
    old_name = (replaces or "").strip() or name
    if old_name != name and any(existing.name == name for existing in styles):
        raise StyleEditError(f"a style named {name!r} already exists; pick another name or edit that one")
    updated, found = [], False
    for existing in styles:
        if existing.name == old_name:
            updated.append(style)
            found = True
        else:
            updated.append(existing)
    if not found:
        updated.append(style)
    write_styles(path, updated)
    return updated


def delete_style(path: Path, name: str) -> list[PromptStyle]:
    styles = read_styles(path)
    kept = [style for style in styles if style.name != name]
    if len(kept) == len(styles):
        raise StyleEditError(f"there is no style named {name!r}")
    write_styles(path, kept)
    return kept


# --------------------------------------------------------------------------------------------- applying


def merge_prompt(style_text: str, prompt: str) -> str:
    """A1111 merge_prompts: `{prompt}` is replaced; otherwise prompt and style are joined by ", "."""
    if PROMPT_PLACEHOLDER in style_text:
        return style_text.replace(PROMPT_PLACEHOLDER, prompt)
    return ", ".join(part for part in (prompt.strip(), style_text.strip()) if part)


def find_styles(names: list[str], styles: list[PromptStyle]) -> list[PromptStyle]:
    by_name = {style.name: style for style in styles}
    found = []
    for name in names:
        style = by_name.get(name)
        if style is None:
            available = ", ".join(by_name) or "none (styles.csv is empty or missing)"
            raise UnknownStyleError(f"unknown style {name!r}; available: {available}")
        found.append(style)
    return found


def apply_styles(prompt: str, negative_prompt: str, names: list[str], styles: list[PromptStyle]) -> tuple[str, str]:
    """(prompt, negative) with the named styles applied in order; unknown names raise UnknownStyleError."""
    for style in find_styles(names, styles):
        prompt = merge_prompt(style.prompt, prompt)
        negative_prompt = merge_prompt(style.negative_prompt, negative_prompt)
    return prompt, negative_prompt


def _strip_style_text(style_text: str, prompt: str) -> str | None:
    """The prompt without this style's text, or None when the style was not applied to it (A1111's rule)."""
    text, stripped = style_text.strip(), prompt.strip()
    if PROMPT_PLACEHOLDER in text:
        left, _, right = text.partition(PROMPT_PLACEHOLDER)
        if stripped.startswith(left) and stripped.endswith(right) and len(stripped) >= len(left) + len(right):
            return stripped[len(left):len(stripped) - len(right)]
        return None
    if not stripped.endswith(text):
        return None
    rest = stripped[:len(stripped) - len(text)]
    return rest[:-2] if rest.endswith(", ") else rest


def extract_styles(prompt: str, negative_prompt: str,
                   styles: list[PromptStyle]) -> tuple[list[str], str, str]:
    """(style names in applying order, prompt, negative) with the styles' texts removed — A1111
    extract_styles_from_prompt: peel the outermost matching style off until none matches."""
    found: list[str] = []
    candidates = [style for style in styles if style.prompt or style.negative_prompt]
    while True:
        for style in candidates:
            inner = _strip_style_text(style.prompt, prompt)
            inner_negative = _strip_style_text(style.negative_prompt, negative_prompt) if inner is not None else None
            if inner is not None and inner_negative is not None:
                prompt, negative_prompt = inner, inner_negative
                candidates.remove(style)
                found.append(style.name)
                break
        else:
            return list(reversed(found)), prompt, negative_prompt
