"""A1111 prompts → text-encoder embeddings for SD1.x, SD2.x and SDXL, scheduled over the sampling steps.

We build ``prompt_embeds`` ourselves instead of calling ``pipe.encode_prompt``: diffusers' ``clip_skip`` crashes
on transformers 5 (flattened ``CLIPTextModel``) and no library implements A1111's syntax. Per text:
parse (prompt_parser) → 77-token chunks with weights (prompt_chunks) → encoder per chunk → emphasis →
chunks concatenated on the sequence axis. Encoder outputs are cached per chunk in an LRU owned by each PromptEncoder.
Textual-inversion embeddings (``set_embeddings``) replace their names' tokens with their vectors
(``textual_inversion.py``); emphasis weights apply to those vectors like to any token.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Hashable

import torch

from modules.engine.prompt_chunks import PromptChunk, count_tokens, tokenize_prompt
from modules.engine.prompt_parser import get_prompt_schedule, strip_comments, strip_extra_network_tags
from modules.engine.textual_inversion import CLIP_G, CLIP_L, SINGLE, EmbeddingLookup, fixes_key, substituted_vectors

__all__ = ["Conditioning", "PromptEncoder", "PromptSchedule", "TextEncoderSet", "count_tokens"]

ENCODER_KINDS = ("sd1", "sd2", "sdxl")


@dataclass
class TextEncoderSet:
    """A loaded model's tokenizers and text encoders (diffusers/transformers objects).

    sd1/sd2: ``tokenizer`` + ``text_encoder`` (``CLIPTextModel``). sdxl: also ``tokenizer_2`` +
    ``text_encoder_2`` (``CLIPTextModelWithProjection``); the SDXL refiner has only the second pair
    (``tokenizer``/``text_encoder`` None).
    """

    kind: str
    tokenizer: Any
    text_encoder: Any
    tokenizer_2: Any = None
    text_encoder_2: Any = None

    def encoder_pairs(self) -> list[tuple[Any, Any]]:
        pairs = [(self.tokenizer, self.text_encoder), (self.tokenizer_2, self.text_encoder_2)]
        return [(tokenizer, encoder) for tokenizer, encoder in pairs if encoder is not None]

    def vector_keys(self) -> list[str]:
        """Per encoder of ``encoder_pairs()``, the key of its vectors in a textual-inversion embedding."""
        if self.kind != "sdxl":
            return [SINGLE]
        keyed = ((CLIP_L, self.text_encoder), (CLIP_G, self.text_encoder_2))
        return [key for key, encoder in keyed if encoder is not None]

    def vector_widths(self) -> dict[str, int]:
        """Embedding vector key → the width its vectors need (the encoder's hidden size)."""
        return {key: encoder.config.hidden_size for key, (_, encoder) in zip(self.vector_keys(), self.encoder_pairs())}

    @property
    def chunk_tokenizer(self) -> Any:
        """All CLIP tokenizers share one vocabulary; chunking uses the first available."""
        return self.tokenizer if self.tokenizer is not None else self.tokenizer_2


@dataclass
class Conditioning:
    embeds: torch.Tensor  # [1, 77*k, D]
    pooled: torch.Tensor | None  # [1, P] for SDXL, else None


@dataclass
class PromptSchedule:
    """Positive and negative conditioning per sampling step, all padded to the same sequence length.

    Entries are (until_step, Conditioning) with A1111's 1-based ``until_step``. ``at(step)`` takes the 0-based
    sampling step and, like A1111's CFG denoiser, uses the first entry with ``step <= until_step``: so
    ``[a:b:10]`` uses ``a`` for steps 0-10 and ``b`` from step 11.
    """

    steps: int
    change_steps: list[int]  # 0-based steps whose (positive, negative) differs from the previous step's
    positive: list[tuple[int, Conditioning]]
    negative: list[tuple[int, Conditioning]]

    def at(self, step: int) -> tuple[Conditioning, Conditioning]:
        return _entry_at(self.positive, step), _entry_at(self.negative, step)


def _entry_index(entries: list[tuple[int, Any]], step: int) -> int:
    for index, (until_step, _) in enumerate(entries):
        if step <= until_step:
            return index
    return len(entries) - 1


def _entry_at(entries: list[tuple[int, Conditioning]], step: int) -> Conditioning:
    return entries[_entry_index(entries, step)][1]


def _change_steps(positive: list[tuple[int, str]], negative: list[tuple[int, str]], steps: int) -> list[int]:
    """0-based steps whose (positive text, negative text) differs from the previous step's."""

    def texts(step: int) -> tuple[str, str]:
        return positive[_entry_index(positive, step)][1], negative[_entry_index(negative, step)][1]

    return [step for step in range(1, steps) if texts(step) != texts(step - 1)]


# --- one chunk through one encoder ----------------------------------------------------------------------------


def final_layer_norm(text_encoder: Any) -> torch.nn.Module:
    """transformers 5 flattens ``CLIPTextModel`` (no ``.text_model``); ``CLIPTextModelWithProjection`` keeps it."""
    text_model = getattr(text_encoder, "text_model", text_encoder)
    return text_model.final_layer_norm


def encoder_input_ids(chunk: PromptChunk, tokenizer: Any) -> list[int]:
    """Chunks are padded with EOS; encoders whose tokenizer pads with another token (SD2, SDXL's OpenCLIP-bigG:
    "!") get that token after the first EOS, as A1111 and diffusers do."""
    tokens = list(chunk.tokens)
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    if pad is not None and pad != eos:
        first_eos = tokens.index(eos)
        tokens[first_eos + 1 :] = [pad] * (len(tokens) - first_eos - 1)
    return tokens


def apply_emphasis(z: torch.Tensor, multipliers: torch.Tensor, emphasis: str) -> torch.Tensor:
    """Original: z *= w per token, then z *= mean_before / mean_after (restores the overall mean).
    No norm: only z *= w. Ignore / None: unchanged. Computed in float32; z is [1, 77, D], multipliers [77]."""
    if emphasis in ("Ignore", "None") or bool((multipliers == 1.0).all()):
        return z  # exactly the unweighted output: (word:1.0) ≡ word
    weighted = z.float() * multipliers.float().reshape(1, -1, 1)
    if emphasis == "Original":
        weighted = weighted * (z.float().mean() / weighted.mean())
    return weighted.to(z.dtype)


def run_encoder(
    text_encoder: Any, input_ids: torch.Tensor, clip_skip: int, sdxl: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Hidden states for one chunk [1, 77] → ([1, 77, D], pooled [1, P] or None).

    A1111 clip skip N (1 = last layer). SD1/SD2: hidden_states[-N] + final layer norm (N = 1: last_hidden_state).
    SDXL: hidden_states[-(N + 1)] without final norm; pooled = projected ``text_embeds`` (OpenCLIP-bigG only).
    """
    layers = text_encoder.config.num_hidden_layers
    if not 1 <= clip_skip <= layers:
        raise ValueError(f"clip skip must be between 1 and {layers} for this text encoder, got {clip_skip}")
    output = text_encoder(input_ids, output_hidden_states=True)
    if sdxl:
        z = output.hidden_states[-(clip_skip + 1)]
    elif clip_skip == 1:
        z = output.last_hidden_state
    else:
        z = final_layer_norm(text_encoder)(output.hidden_states[-clip_skip])
    return z, getattr(output, "text_embeds", None)


# --- the encoder with its cache -------------------------------------------------------------------------------


@dataclass
class _EncodedText:
    chunks: list[torch.Tensor]  # per chunk [1, 77, D]
    pooled: torch.Tensor | None


class PromptEncoder:
    """Turns (prompt, negative prompt) into a PromptSchedule for one model's text encoders.

    Encoder outputs are cached per (encoder, clip skip, chunk tokens, weights, emphasis, weights_key, embeddings
    in the chunk) in an LRU of ``cache_size`` chunks. Pass a ``weights_key`` to ``schedule`` that changes whenever
    the text encoders' weights change (e.g. the active LoRAs with their TE weights), or call ``clear_cache()``.
    ``set_embeddings`` chooses the textual-inversion embeddings used from then on.
    """

    def __init__(self, encoders: TextEncoderSet, *, cache_size: int = 128) -> None:
        if encoders.kind not in ENCODER_KINDS:
            raise ValueError(f"unknown text encoder kind {encoders.kind!r}; expected one of {ENCODER_KINDS}")
        if not encoders.encoder_pairs():
            raise ValueError("TextEncoderSet has no text encoder")
        self.encoders = encoders
        self.cache_size = cache_size
        self._cache: OrderedDict[Hashable, tuple[torch.Tensor, torch.Tensor | None]] = OrderedDict()
        self.embeddings: EmbeddingLookup | None = None

    def clear_cache(self) -> None:
        self._cache.clear()

    def set_embeddings(self, embeddings: EmbeddingLookup | None) -> None:
        """Embeddings whose names the prompts may use (built for this model's tokenizer; None = none)."""
        self.embeddings = embeddings

    def schedule(
        self,
        prompt: str,
        negative_prompt: str,
        steps: int,
        *,
        clip_skip: int = 1,
        emphasis: str = "Original",
        hires_steps: int | None = None,
        weights_key: Hashable = (),
    ) -> PromptSchedule:
        """Encode every distinct text of both schedules once and pad all to the same number of chunks.

        The positive prompt should already have its extra-network tags extracted; leftovers are stripped here.
        The negative keeps them as text (A1111). ``hires_steps``: schedule of a hires pass after ``steps``.
        """
        positive_text = strip_extra_network_tags(strip_comments(prompt))
        negative_text = strip_comments(negative_prompt)
        positive = get_prompt_schedule(positive_text, steps, hires_steps)
        negative = get_prompt_schedule(negative_text, steps, hires_steps)
        embeddings = self.embeddings  # read once: a job sees one embedding set throughout
        with torch.inference_mode():
            encoded = {
                text: self._encode_text(text, clip_skip, emphasis, weights_key, embeddings)
                for text in dict.fromkeys(text for _, text in positive + negative)
            }
            chunk_count = max(len(item.chunks) for item in encoded.values())
            empty_chunk = None
            if any(len(item.chunks) < chunk_count for item in encoded.values()):
                empty_chunk = self._encode_text("", clip_skip, emphasis, weights_key, None).chunks[0]
        zero_negative = self.encoders.kind == "sdxl" and all(text == "" for _, text in negative)

        def pad(item: _EncodedText) -> Conditioning:
            return _padded_conditioning(item, chunk_count, empty_chunk)

        with torch.no_grad():  # outside inference mode: callers get ordinary tensors they may modify in place
            positive_by_text = {text: pad(encoded[text]) for _, text in positive}
            negative_by_text = {
                text: pad(_zeros_like(encoded[text]) if zero_negative else encoded[text]) for _, text in negative
            }
        positive_entries = [(until, positive_by_text[text]) for until, text in positive]
        negative_entries = [(until, negative_by_text[text]) for until, text in negative]
        total = hires_steps if hires_steps is not None else steps
        return PromptSchedule(total, _change_steps(positive, negative, total), positive_entries, negative_entries)

    def _encode_text(self, text: str, clip_skip: int, emphasis: str, weights_key: Hashable,
                     embeddings: EmbeddingLookup | None) -> _EncodedText:
        chunks, _ = tokenize_prompt(text, self.encoders.chunk_tokenizer, emphasis=emphasis, embeddings=embeddings)
        encoded = [self._encode_chunk(chunk, clip_skip, emphasis, weights_key) for chunk in chunks]
        return _EncodedText([z for z, _ in encoded], encoded[0][1])  # pooled from the FIRST chunk (A1111)

    def _encode_chunk(
        self, chunk: PromptChunk, clip_skip: int, emphasis: str, weights_key: Hashable
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """[1, 77, D] (SDXL: both encoders concatenated on the last axis) and the pooled output or None."""
        sdxl = self.encoders.kind == "sdxl"
        outputs = [
            self._encode_chunk_with(slot, tokenizer, encoder, vector_key, chunk, clip_skip, emphasis, weights_key, sdxl)
            for slot, ((tokenizer, encoder), vector_key)
            in enumerate(zip(self.encoders.encoder_pairs(), self.encoders.vector_keys()))
        ]
        device = outputs[0][0].device
        z = torch.cat([z.to(device) for z, _ in outputs], dim=-1)
        pooled = outputs[-1][1] if sdxl else None  # SDXL: OpenCLIP-bigG's projected EOS state
        return z, None if pooled is None else pooled.to(device)

    def _encode_chunk_with(
        self,
        slot: int,
        tokenizer: Any,
        encoder: Any,
        vector_key: str,
        chunk: PromptChunk,
        clip_skip: int,
        emphasis: str,
        weights_key: Hashable,
        sdxl: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        key = (slot, clip_skip, tuple(chunk.tokens), tuple(chunk.multipliers), emphasis, weights_key,
               fixes_key(chunk.fixes))
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        device = encoder.device
        input_ids = torch.tensor([encoder_input_ids(chunk, tokenizer)], device=device)
        with substituted_vectors(encoder, chunk.fixes, vector_key):
            z, pooled = run_encoder(encoder, input_ids, clip_skip, sdxl)
        z = apply_emphasis(z, torch.tensor(chunk.multipliers, device=device), emphasis)
        self._cache[key] = (z, pooled)
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return z, pooled


def _zeros_like(item: _EncodedText) -> _EncodedText:
    """A1111 zeroes SDXL's embeddings and pooled output for an empty negative prompt."""
    pooled = None if item.pooled is None else torch.zeros_like(item.pooled)
    return _EncodedText([torch.zeros_like(chunk) for chunk in item.chunks], pooled)


def _padded_conditioning(item: _EncodedText, chunk_count: int, empty_chunk: torch.Tensor | None) -> Conditioning:
    """Pad with encoded empty chunks (A1111 ``pad_cond_uncond``) so every conditioning has the same length;
    returns new tensors, never the cached ones."""
    chunks = item.chunks + [empty_chunk] * (chunk_count - len(item.chunks))
    pooled = None if item.pooled is None else item.pooled.clone()
    return Conditioning(embeds=torch.cat(chunks, dim=1), pooled=pooled)
