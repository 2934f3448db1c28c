"""The CLIP tokenizer every Stable Diffusion family uses, built from the bundled files.

The vocabulary and merges are derived once from OpenAI's BPE file (``modules/configs/clip_tokenizer/``,
see ``derive_clip_tokenizer.py``); only the pad token differs between encoders, and it changes the
embeddings: SD1.x and SDXL's first encoder pad with ``<|endoftext|>`` (49407), SD2.x and SDXL's
OpenCLIP-bigG encoder with ``"!"`` (id 0).
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import CLIPTokenizer

CLIP_TOKENIZER_DIR = Path(__file__).resolve().parent.parent / "configs" / "clip_tokenizer"
END_OF_TEXT = "<|endoftext|>"
OPEN_CLIP_PAD = "!"
CLIP_MAX_LENGTH = 77  # 75 prompt tokens + BOS + EOS


def read_vocab(tokenizer_dir: Path = CLIP_TOKENIZER_DIR) -> dict[str, int]:
    return json.loads((tokenizer_dir / "vocab.json").read_text(encoding="utf-8"))


def read_merges(tokenizer_dir: Path = CLIP_TOKENIZER_DIR) -> list[tuple[str, str]]:
    lines = (tokenizer_dir / "merges.txt").read_text(encoding="utf-8").splitlines()
    return [tuple(line.split(" ")) for line in lines[1:] if line]  # type: ignore[misc]  # line 0: "#version"


def load_clip_tokenizer(pad_token: str = END_OF_TEXT, tokenizer_dir: Path = CLIP_TOKENIZER_DIR) -> CLIPTokenizer:
    """A fresh ``CLIPTokenizer`` (49,408 tokens, max length 77) with the given pad token.

    Nothing is cached here: callers that build many pipelines keep the tokenizer they got.
    """
    return CLIPTokenizer(
        vocab=read_vocab(tokenizer_dir),
        merges=read_merges(tokenizer_dir),
        unk_token=END_OF_TEXT,
        bos_token="<|startoftext|>",
        eos_token=END_OF_TEXT,
        pad_token=pad_token,
        model_max_length=CLIP_MAX_LENGTH,
    )
