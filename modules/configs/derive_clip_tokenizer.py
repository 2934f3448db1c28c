"""Derive the bundled CLIP tokenizer files from OpenAI's ``bpe_simple_vocab_16e6.txt.gz``.

Why: Stable Diffusion's text encoders use OpenAI's CLIP BPE vocabulary. We ship it as the
``vocab.json`` + ``merges.txt`` pair that ``transformers.CLIPTokenizer`` reads, so the app never
downloads a tokenizer. The ``.gz`` file is MIT-licensed (OpenAI CLIP) and is found in the PyPI wheel
of ``open-clip-torch`` (``open_clip/bpe_simple_vocab_16e6.txt.gz``), which need not be installed:

    pip download --no-deps open-clip-torch -d /tmp/oc
    unzip -o -j /tmp/oc/open_clip_torch-*.whl 'open_clip/bpe_simple_vocab_16e6.txt.gz' -d /tmp/oc
    python modules/configs/derive_clip_tokenizer.py /tmp/oc/bpe_simple_vocab_16e6.txt.gz

The algorithm is CLIP's ``simple_tokenizer.py``:
  1. decompress, drop the header line, keep the next 49152 - 256 - 2 = 48894 lines as merges "a b";
  2. GPT-2 byte→unicode table (printable bytes map to themselves, the other 68 to 256, 257, …);
  3. vocabulary = 256 byte characters, the same with "</w>", one token per merge, then
     "<|startoftext|>" (49406) and "<|endoftext|>" (49407): 49408 tokens.
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

MERGE_COUNT = 49152 - 256 - 2  # CLIP's vocabulary budget minus byte tokens and the two specials
EXPECTED_VOCAB_SIZE = 49408
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "clip_tokenizer"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte → printable-character table, in CLIP's order."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    table = {byte: chr(byte) for byte in printable}
    next_code_point = 256
    for byte in range(256):
        if byte not in table:
            table[byte] = chr(next_code_point)
            next_code_point += 1
    # Order matters for the ids: printable bytes first (in byte order), then the remapped ones.
    ordered_bytes = printable + [b for b in range(256) if b not in printable]
    return {byte: table[byte] for byte in ordered_bytes}


def read_merges(bpe_gz_path: Path) -> list[tuple[str, str]]:
    """The 48,894 merge pairs of the BPE file (header line skipped)."""
    lines = gzip.open(bpe_gz_path).read().decode("utf-8").split("\n")
    merge_lines = lines[1 : 1 + MERGE_COUNT]
    return [tuple(line.split()) for line in merge_lines]  # type: ignore[misc]


def build_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    """Token → id in CLIP's order (see module docstring, step 3)."""
    byte_chars = list(bytes_to_unicode().values())
    tokens = byte_chars + [char + "</w>" for char in byte_chars]
    tokens += ["".join(pair) for pair in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: index for index, token in enumerate(tokens)}
    if len(vocab) != EXPECTED_VOCAB_SIZE:
        raise ValueError(f"expected {EXPECTED_VOCAB_SIZE} tokens, got {len(vocab)}")
    return vocab


def write_tokenizer_files(bpe_gz_path: Path, output_dir: Path = DEFAULT_OUTPUT) -> None:
    """Write ``vocab.json`` and ``merges.txt`` into ``output_dir``."""
    merges = read_merges(bpe_gz_path)
    vocab = build_vocab(merges)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merge_text = "#version: 0.2\n" + "\n".join(" ".join(pair) for pair in merges) + "\n"
    (output_dir / "merges.txt").write_text(merge_text, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bpe_gz", type=Path, help="path to bpe_simple_vocab_16e6.txt.gz")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="folder to write into")
    args = parser.parse_args()
    write_tokenizer_files(args.bpe_gz, args.output)
    print(f"wrote {args.output / 'vocab.json'} and {args.output / 'merges.txt'}")


if __name__ == "__main__":
    main()
