"""Prompt styles for the API: the implementation lives in modules/styles.py (the UI edits styles.csv too)."""
from __future__ import annotations

from modules.styles import (
    PROMPT_PLACEHOLDER,
    PromptStyle,
    UnknownStyleError,
    apply_styles,
    merge_prompt,
    read_styles,
)

__all__ = ["PROMPT_PLACEHOLDER", "PromptStyle", "UnknownStyleError", "apply_styles", "merge_prompt", "read_styles"]
