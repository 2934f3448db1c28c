"""Prompt text → 77-token chunks with per-token weights, and the UI's "N/75" token counter (no torch).

Ported from A1111 ``sd_hijack_clip.FrozenCLIPEmbedderWithCustomWordsBase.tokenize_line``: each chunk is
BOS + 75 prompt tokens + EOS, padded with EOS; ``BREAK`` closes a chunk early; when a chunk fills up and a comma
lies within the last ``comma_backtrack`` tokens, the text after the comma moves to the next chunk.
Textual-inversion embeddings found in the text take one placeholder token per vector (``PromptChunk.fixes`` says
which vectors go where; ``textual_inversion.py`` substitutes them) and are never split across chunks.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from modules.engine.prompt_parser import (
    BREAK_MARKER,
    extract_extra_networks,
    get_prompt_schedule,
    parse_prompt_attention,
    strip_comments,
)

if TYPE_CHECKING:
    from modules.engine.textual_inversion import Embedding, EmbeddingLookup

CHUNK_LENGTH = 75  # prompt tokens per chunk; + BOS + EOS = the encoders' 77 positions
COMMA_PADDING_BACKTRACK = 20  # A1111 setting comma_padding_backtrack
EMPHASIS_MODES = ("Original", "No norm", "Ignore", "None")
PLACEHOLDER_TOKEN = 0  # A1111 fills an embedding's slots with token 0; its vectors replace them in the encoder

# (position in the chunk's 77 tokens, embedding): its vectors go to positions [position, position + count)
Fix = tuple[int, "Embedding"]


@dataclass
class PromptChunk:
    """77 token ids (BOS, 75 tokens padded with EOS, EOS) and one weight per id (1.0 on BOS/EOS/padding);
    ``fixes``: the textual-inversion embeddings whose vectors replace placeholder tokens."""

    tokens: list[int]
    multipliers: list[float]
    fixes: list[Fix] = field(default_factory=list)


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
        self.fixes: list[Fix] = []  # positions count from the first prompt token (BOS is added on closing)
        self.last_comma = -1
        self.token_count = 0

    def close_chunk(self, is_last: bool = False) -> None:
        self.token_count += len(self.tokens) if is_last else CHUNK_LENGTH
        padding = CHUNK_LENGTH - len(self.tokens)
        tokens = [self.bos, *self.tokens, *[self.eos] * padding, self.eos]
        multipliers = [1.0, *self.multipliers, *[1.0] * padding, 1.0]
        fixes = [(position + 1, embedding) for position, embedding in self.fixes]  # + 1: after BOS
        self.chunks.append(PromptChunk(tokens, multipliers, fixes))
        self.tokens, self.multipliers, self.fixes, self.last_comma = [], [], [], -1

    def move_text_after_comma(self) -> None:
        """The chunk is full: close it at the last comma and carry the rest (embeddings too) into the next chunk.
        (A1111 leaves the carried embeddings' fixes behind — a bug we do not copy.)"""
        cut = self.last_comma + 1
        carried_tokens, carried_multipliers = self.tokens[cut:], self.multipliers[cut:]
        carried_fixes = [(position - cut, embedding) for position, embedding in self.fixes if position >= cut]
        self.tokens, self.multipliers = self.tokens[:cut], self.multipliers[:cut]
        self.fixes = [(position, embedding) for position, embedding in self.fixes if position < cut]
        self.close_chunk()
        self.tokens, self.multipliers, self.fixes = carried_tokens, carried_multipliers, carried_fixes

    def add_embedding(self, embedding: Embedding, weight: float) -> None:
        """``count`` placeholders with the fragment's weight, all in one chunk (A1111 starts a new chunk if the
        embedding does not fit)."""
        if len(self.tokens) + embedding.count > CHUNK_LENGTH:
            self.close_chunk()
        self.fixes.append((len(self.tokens), embedding))
        self.tokens += [PLACEHOLDER_TOKEN] * embedding.count
        self.multipliers += [weight] * embedding.count

    def add(self, token: int, weight: float, comma: int | None, comma_backtrack: int) -> None:
        self.make_room(token, comma, comma_backtrack)
        self.tokens.append(token)
        self.multipliers.append(weight)

    def make_room(self, token: int, comma: int | None, comma_backtrack: int) -> None:
        """Before the token at the current position: note commas, move text after a near comma on, close a full
        chunk (A1111 does this before looking for an embedding at the position)."""
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
    embeddings: EmbeddingLookup | None = None,
) -> tuple[list[PromptChunk], int]:
    """Split one schedule text (no editing syntax left) into chunks; returns (chunks, token count).

    With ``embeddings``, each embedding name in the text becomes its vectors' placeholders (see PromptChunk.fixes).
    """
    fragments = parse_weighted_fragments(text, emphasis)
    token_lists = tokenizer([part for part, _ in fragments], truncation=False, add_special_tokens=False)["input_ids"]
    builder = _ChunkBuilder(tokenizer.bos_token_id, tokenizer.eos_token_id)
    comma = comma_token_id(tokenizer)
    for tokens, fragment in zip(token_lists, fragments):
        if fragment == BREAK_MARKER:
            builder.close_chunk()
            continue
        position = 0
        while position < len(tokens):
            found = embeddings.match(tokens, position) if embeddings else None
            if found is None:
                builder.add(tokens[position], fragment[1], comma, comma_backtrack)
                position += 1
                continue
            embedding, name_length = found
            builder.make_room(tokens[position], comma, comma_backtrack)
            builder.add_embedding(embedding, fragment[1])
            position += name_length
    if builder.tokens or not builder.chunks:
        builder.close_chunk(is_last=True)
    return builder.chunks, builder.token_count


def count_tokens(
    prompt: str, tokenizer: Any, steps: int = 20, *, emphasis: str = "Original",
    embeddings: EmbeddingLookup | None = None,
) -> tuple[int, int]:
    """A1111's token counter "N/M": tokens used by the longest schedule entry and M = 75 × chunks needed.

    Comments and extra-network tags do not count; an embedding counts one token per vector.
    """
    text, _ = extract_extra_networks(prompt)
    counts = [tokenize_prompt(entry, tokenizer, emphasis=emphasis, embeddings=embeddings)[1]
              for _, entry in get_prompt_schedule(text, steps)]
    used = max(counts)
    return used, -(-max(used, 1) // CHUNK_LENGTH) * CHUNK_LENGTH  # ceil(max(used, 1) / 75) * 75


def embeddings_used(
    texts: list[str], tokenizer: Any, embeddings: EmbeddingLookup, steps: int, *, emphasis: str = "Original",
    hires_steps: int | None = None,
) -> list[Embedding]:
    """The embeddings the encoder substitutes for these prompts (every prompt-editing step, and the hires pass's
    schedule when given), in order of first use, each once. Prompts as the encoder gets them: tags removed from
    the positive; the negative as written (A1111 parses no tags there)."""
    found: dict[str, Embedding] = {}
    for text in texts:
        text = strip_comments(text)
        entries = get_prompt_schedule(text, steps) + (get_prompt_schedule(text, steps, hires_steps)
                                                        if hires_steps is not None else [])
        for _, entry in entries:
            for chunk in tokenize_prompt(entry, tokenizer, emphasis=emphasis, embeddings=embeddings)[0]:
                for _, embedding in chunk.fixes:
                    found.setdefault(embedding.name, embedding)
    return list(found.values())
