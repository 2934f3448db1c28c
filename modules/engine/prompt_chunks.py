"""Prompt text → 77-token chunks with per-token weights, and the UI's "N/75" token counter (no torch).

Ported from A1111 ``sd_hijack_clip.FrozenCLIPEmbedderWithCustomWordsBase.tokenize_line``: each chunk is
BOS + 75 prompt tokens + EOS, padded with EOS; ``BREAK`` closes a chunk early; when a chunk fills up and a comma
lies within the last ``comma_backtrack`` tokens, the text after the comma moves to the next chunk.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from modules.engine.prompt_parser import (
    BREAK_MARKER,
    extract_extra_networks,
    get_prompt_schedule,
    parse_prompt_attention,
)

CHUNK_LENGTH = 75  # prompt tokens per chunk; + BOS + EOS = the encoders' 77 positions
COMMA_PADDING_BACKTRACK = 20  # A1111 setting comma_padding_backtrack
EMPHASIS_MODES = ("Original", "No norm", "Ignore", "None")


@dataclass
class PromptChunk:
    """77 token ids (BOS, 75 tokens padded with EOS, EOS) and one weight per id (1.0 on BOS/EOS/padding)."""

    tokens: list[int]
    multipliers: list[float]


def parse_weighted_fragments(text: str, emphasis: str) -> list[tuple[str, float]]:
    """Emphasis "None" takes brackets literally (and has no BREAK), like A1111."""
    if emphasis not in EMPHASIS_MODES:
        raise ValueError(f"unknown emphasis {emphasis!r}; expected one of {EMPHASIS_MODES}")
    if emphasis == "None":
        return [(text, 1.0)]
    return parse_prompt_attention(text)


class _ChunkBuilder:
    """Accumulates tokens into chunks; ``token_count`` follows A1111 (75 per closed chunk + the last one's)."""

    def __init__(self, bos: int, eos: int) -> None:
        self.bos, self.eos = bos, eos
        self.chunks: list[PromptChunk] = []
        self.tokens: list[int] = []
        self.multipliers: list[float] = []
        self.last_comma = -1
        self.token_count = 0

    def close_chunk(self, is_last: bool = False) -> None:
        self.token_count += len(self.tokens) if is_last else CHUNK_LENGTH
        padding = CHUNK_LENGTH - len(self.tokens)
        tokens = [self.bos, *self.tokens, *[self.eos] * padding, self.eos]
        multipliers = [1.0, *self.multipliers, *[1.0] * padding, 1.0]
        self.chunks.append(PromptChunk(tokens, multipliers))
        self.tokens, self.multipliers, self.last_comma = [], [], -1

    def move_text_after_comma(self) -> None:
        """The chunk is full: close it at the last comma and carry the rest into the next chunk."""
        cut = self.last_comma + 1
        carried_tokens, carried_multipliers = self.tokens[cut:], self.multipliers[cut:]
        self.tokens, self.multipliers = self.tokens[:cut], self.multipliers[:cut]
        self.close_chunk()
        self.tokens, self.multipliers = carried_tokens, carried_multipliers

    def add(self, token: int, weight: float, comma: int | None, comma_backtrack: int) -> None:
        if token == comma:
            self.last_comma = len(self.tokens)
        elif (
            comma_backtrack
            and len(self.tokens) == CHUNK_LENGTH
            and self.last_comma != -1
            and len(self.tokens) - self.last_comma <= comma_backtrack
        ):
            self.move_text_after_comma()
        if len(self.tokens) == CHUNK_LENGTH:
            self.close_chunk()
        self.tokens.append(token)
        self.multipliers.append(weight)


def comma_token_id(tokenizer: Any) -> int | None:
    """Id of "," as a whole word (get_vocab() would copy all 49,408 entries on every call)."""
    token_id = tokenizer.convert_tokens_to_ids(",</w>")
    return None if token_id is None or token_id == tokenizer.unk_token_id else token_id


def tokenize_prompt(
    text: str,
    tokenizer: Any,
    *,
    emphasis: str = "Original",
    comma_backtrack: int = COMMA_PADDING_BACKTRACK,
) -> tuple[list[PromptChunk], int]:
    """Split one schedule text (no editing syntax left) into chunks; returns (chunks, token count)."""
    fragments = parse_weighted_fragments(text, emphasis)
    token_lists = tokenizer([part for part, _ in fragments], truncation=False, add_special_tokens=False)["input_ids"]
    builder = _ChunkBuilder(tokenizer.bos_token_id, tokenizer.eos_token_id)
    comma = comma_token_id(tokenizer)
    for tokens, fragment in zip(token_lists, fragments):
        if fragment == BREAK_MARKER:
            builder.close_chunk()
            continue
        for token in tokens:
            builder.add(token, fragment[1], comma, comma_backtrack)
    if builder.tokens or not builder.chunks:
        builder.close_chunk(is_last=True)
    return builder.chunks, builder.token_count


def count_tokens(
    prompt: str, tokenizer: Any, steps: int = 20, *, emphasis: str = "Original"
) -> tuple[int, int]:
    """A1111's token counter "N/M": tokens used by the longest schedule entry and M = 75 × chunks needed.

    Comments and extra-network tags do not count.
    """
    text, _ = extract_extra_networks(prompt)
    counts = [tokenize_prompt(entry, tokenizer, emphasis=emphasis)[1] for _, entry in get_prompt_schedule(text, steps)]
    used = max(counts)
    return used, -(-max(used, 1) // CHUNK_LENGTH) * CHUNK_LENGTH  # ceil(max(used, 1) / 75) * 75
