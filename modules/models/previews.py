"""Live-preview decoders: TAESD (madebyollin/taesd, MIT) from models/VAE-taesd or models/VAE-approx.

TAESD decodes UNet-space latents directly (no scaling factor) into [-1, 1] images, at a tiny fraction of the VAE's
cost. Only the decoder is needed for previews.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from diffusers import AutoencoderTiny

log = logging.getLogger(__name__)

DECODER_FILES = {"sd": "taesd_decoder.pth", "sdxl": "taesdxl_decoder.pth"}


def taesd_decoder_keys_to_diffusers(decoder_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Original decoder index N → diffusers `decoder.layers.{N-1}` (index 0 there is a parameter-free clamp)."""
    converted = {}
    for key, tensor in decoder_state.items():
        index, rest = key.split(".", 1)
        converted[f"decoder.layers.{int(index) - 1}.{rest}"] = tensor
    return converted


def find_taesd_decoder(folders: tuple[Path, ...], kind: str) -> Path | None:
    name = DECODER_FILES["sdxl" if kind == "sdxl" else "sd"]
    return next((folder / name for folder in folders if (folder / name).is_file()), None)


def load_taesd_decoder(path: Path, device: torch.device, dtype: torch.dtype) -> AutoencoderTiny | None:
    """An AutoencoderTiny whose decoder holds the file's weights; None (and a log line) if the file is unusable."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model = AutoencoderTiny()
        missing, unexpected = model.load_state_dict(taesd_decoder_keys_to_diffusers(state), strict=False)
        if unexpected or any(key.startswith("decoder.") for key in missing):
            raise ValueError(f"unexpected keys {unexpected[:3]}, missing decoder keys")
    except Exception as error:  # a bad preview file must not stop generation
        log.warning("ignoring TAESD file %s: %s", path, error)
        return None
    return model.to(device=device, dtype=dtype).eval()
