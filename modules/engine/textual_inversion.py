"""Textual inversion inside prompt encoding: which words are embeddings, and their vectors in place of tokens.

Ported from A1111 (``textual_inversion.EmbeddingDatabase.find_embedding_at_position`` and
``sd_hijack.EmbeddingsWithFixes``): an embedding's name is tokenized like prompt text; where that token sequence
starts a word in a prompt fragment, the chunk gets ``n`` placeholder tokens (id 0, as in A1111) carrying the
fragment's emphasis weight, and a *fix* (position, embedding). While that chunk runs through a text encoder, a
forward hook on the encoder's token-embedding layer writes the embedding's vectors over the placeholders' token
vectors (position embeddings are added afterwards, as for any token). No files here: the model side
(``modules/models/embedding_files.py``) reads them.
"""
from __future__ import annotations

from collections.abc import Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from modules.engine.prompt_chunks import PLACEHOLDER_TOKEN, Fix

__all__ = ["CLIP_G", "CLIP_L", "SINGLE", "PLACEHOLDER_TOKEN", "Embedding", "EmbeddingLookup", "Fix", "fixes_key",
           "substituted_vectors"]

SINGLE = "*"  # vectors for the one text encoder of SD1.x / SD2.x (A1111 string_to_param's "*")
CLIP_L = "clip_l"  # SDXL's first encoder (CLIP ViT-L, 768 wide in the real model)
CLIP_G = "clip_g"  # SDXL's second encoder (OpenCLIP bigG, 1280 wide)
WORD_END = "</w>"  # CLIP BPE marks the last piece of each word


@dataclass(frozen=True, eq=False)
class Embedding:
    """One embedding's vectors per encoder key ([n, width] float32 each; SDXL has CLIP_L and CLIP_G).

    ``key`` identifies the vectors for caches: it must change when the vectors change (e.g. the file's sha256).
    """

    name: str
    vectors: Mapping[str, torch.Tensor]
    key: Hashable

    @property
    def count(self) -> int:
        """Tokens it takes in a prompt (A1111 ``vectors``)."""
        return next(iter(self.vectors.values())).shape[0]


class EmbeddingLookup:
    """Embeddings by the token ids of their names, for one tokenizer (all CLIP tokenizers share one vocabulary)."""

    def __init__(self, embeddings: Sequence[Embedding], tokenizer: Any) -> None:
        self.embeddings = tuple(embeddings)
        self.key: Hashable = tuple((embedding.name, embedding.key) for embedding in self.embeddings)
        self._tokenizer = tokenizer
        names = [embedding.name for embedding in self.embeddings]
        ids = tokenizer(names, truncation=False, add_special_tokens=False)["input_ids"] if names else []
        candidates: dict[int, list[tuple[tuple[int, ...], Embedding]]] = {}
        for token_ids, embedding in zip(ids, self.embeddings):
            if token_ids:
                candidates.setdefault(token_ids[0], []).append((tuple(token_ids), embedding))
        for entries in candidates.values():
            entries.sort(key=lambda entry: -len(entry[0]))  # longest name first, as A1111
        self._candidates = candidates

    def __bool__(self) -> bool:
        return bool(self._candidates)

    def match(self, tokens: Sequence[int], position: int) -> tuple[Embedding, int] | None:
        """The embedding whose name's tokens start at ``position`` of a fragment's tokens (and how many tokens
        the name used), or None. A name only matches at the start of a word (A1111 also matches mid-word when
        the BPE pieces happen to line up; whole words are what users mean)."""
        for token_ids, embedding in self._candidates.get(tokens[position], ()):
            if tuple(tokens[position:position + len(token_ids)]) == token_ids and self._starts_word(tokens, position):
                return embedding, len(token_ids)
        return None

    def _starts_word(self, tokens: Sequence[int], position: int) -> bool:
        return position == 0 or self._tokenizer.convert_ids_to_tokens(tokens[position - 1]).endswith(WORD_END)


def fixes_key(fixes: Sequence[Fix]) -> Hashable:
    """Cache-key part of a chunk's embeddings: which vectors sit where (placeholder tokens are all 0)."""
    return tuple((position, embedding.name, embedding.key) for position, embedding in fixes)


@contextmanager
def substituted_vectors(text_encoder: Any, fixes: Sequence[Fix], vector_key: str) -> Iterator[None]:
    """While active, the encoder's token vectors at each fix's positions are the embedding's ``vector_key``
    vectors (A1111 EmbeddingsWithFixes). A forward hook on the token-embedding layer, removed on exit."""
    if not fixes:
        yield
        return

    def replace(module: torch.nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
        output = output.clone()
        for position, embedding in fixes:
            vectors = embedding.vectors[vector_key]
            output[:, position:position + vectors.shape[0]] = vectors.to(output.device, output.dtype)
        return output

    handle = text_encoder.get_input_embeddings().register_forward_hook(replace)
    try:
        yield
    finally:
        handle.remove()
