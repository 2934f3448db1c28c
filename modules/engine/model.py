"""EngineModel: what the engine needs from a loaded checkpoint — its components, prompt encoder and identity.

The model manager builds one each time a checkpoint becomes resident; pipelines are built per job from its components
(`Cls(**components)` is cheap and side-effect free, unlike `from_pipe`, which up-casts shared modules).
"""
from __future__ import annotations

from typing import Any

import logging

import diffusers
import numpy as np
import torch
from PIL import Image

from modules.engine.prompts import PromptEncoder, TextEncoderSet

log = logging.getLogger(__name__)

# family → task → pipeline class. "inpaint" serves masked jobs and every job of a 9-channel inpainting UNet.
PIPELINE_CLASSES = {
    "sd1": {"txt2img": "StableDiffusionPipeline", "img2img": "StableDiffusionImg2ImgPipeline",
            "inpaint": "StableDiffusionInpaintPipeline"},
    "sd2": {"txt2img": "StableDiffusionPipeline", "img2img": "StableDiffusionImg2ImgPipeline",
            "inpaint": "StableDiffusionInpaintPipeline"},
    "sdxl": {"txt2img": "StableDiffusionXLPipeline", "img2img": "StableDiffusionXLImg2ImgPipeline",
             "inpaint": "StableDiffusionXLInpaintPipeline"},
}
INPAINTING_UNET_CHANNELS = 9  # 4 latent + 1 mask + 4 masked-image latent channels

# A1111 "Approx cheap" latent → RGB factors (sd_vae_approx.cheap_approximation), used when no TAESD is present.
CHEAP_APPROX = {
    "sd": [[0.298, 0.207, 0.208], [0.187, 0.286, 0.173], [-0.158, 0.189, 0.264], [-0.184, -0.271, -0.473]],
    "sdxl": [[0.3448, 0.4168, 0.4395], [-0.1953, -0.0290, 0.0250], [0.1074, 0.0886, -0.0163],
             [-0.3730, -0.2499, -0.2088]],
}
FULL_DECODE_PREVIEW_MAX_LATENT = 32 * 32  # tiny models: decoding with the real VAE is as cheap as approximating


def family_kind(family: str) -> str:
    """'sd15-inpaint' → 'sd1', 'sd2-v' → 'sd2', 'sdxl-refiner' → 'sdxl'."""
    if family.startswith("sdxl"):
        return "sdxl"
    if family.startswith("sd2"):
        return "sd2"
    return "sd1"


class EngineModel:
    """A resident checkpoint as the engine sees it. Identity fields feed the infotext."""

    def __init__(self, components: Any, identity: dict[str, Any], *, native_size: int) -> None:
        self.components = components
        self.family: str = components.info.family
        self.kind = family_kind(self.family)
        self.native_size = native_size
        self.prompt_encoder = PromptEncoder(TextEncoderSet(
            kind=self.kind, tokenizer=components.tokenizer, text_encoder=components.text_encoder,
            tokenizer_2=components.tokenizer_2, text_encoder_2=components.text_encoder_2))
        self.model_name: str = identity["model_name"]
        self.model_hash: str | None = identity.get("model_hash")
        self.title: str = identity.get("title", self.model_name)
        self.vae_name: str | None = None
        self.vae_hash: str | None = None
        self.preview_decoder: Any = None  # a TAESD AutoencoderTiny when its weights are installed

    def set_vae_identity(self, name: str | None, short_hash: str | None) -> None:
        self.vae_name, self.vae_hash = name, short_hash

    @property
    def scheduler_config(self) -> dict[str, Any]:
        return dict(self.components.scheduler_config)

    @property
    def device(self) -> torch.device:
        return self.components.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.components.unet.dtype

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.components.vae.config.block_out_channels) - 1)

    @property
    def is_inpainting(self) -> bool:
        """A 9-channel inpainting UNet: every job must condition it on a mask and a masked image (A1111 'hybrid')."""
        return self.components.unet.config.in_channels == INPAINTING_UNET_CHANNELS

    def pipeline(self, task: str, scheduler: Any) -> Any:
        """A fresh pipeline object for one job ('txt2img', 'img2img' or 'inpaint') sharing this model's modules."""
        if self.family == "sdxl-refiner":
            raise ValueError("an SDXL refiner checkpoint cannot generate on its own; load an SDXL base checkpoint")
        if task not in PIPELINE_CLASSES[self.kind]:
            raise ValueError(f"unknown pipeline task {task!r}; choose one of {', '.join(PIPELINE_CLASSES[self.kind])}")
        class_name = PIPELINE_CLASSES[self.kind][task]
        parts = self.components
        kwargs: dict[str, Any] = dict(vae=parts.vae, text_encoder=parts.text_encoder, tokenizer=parts.tokenizer,
                                      unet=parts.unet, scheduler=scheduler)
        if self.kind == "sdxl":
            kwargs.update(text_encoder_2=parts.text_encoder_2, tokenizer_2=parts.tokenizer_2, add_watermarker=False)
        else:
            kwargs.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        pipe = getattr(diffusers, class_name)(**kwargs)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def decode(self, latents: torch.Tensor) -> list[Image.Image]:
        """VAE decode; an fp16 VAE that overflows (NaNs) is retried in fp32, the fix A1111 users wish they had."""
        vae = self.components.vae
        with torch.inference_mode():
            decoded = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample
            if torch.isnan(decoded).any() and vae.dtype != torch.float32:
                log.warning("VAE produced NaNs in %s; decoding again in float32", vae.dtype)
                decoded = vae.float().decode(latents.float() / vae.config.scaling_factor).sample
                vae.to(self.dtype)
        pixels = ((decoded.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        return [Image.fromarray(array) for array in pixels]

    def encode(self, images: list[Image.Image]) -> torch.Tensor:
        """Pixels → UNet-space latents (the inverse of decode); images of one size."""
        return self.encode_pixels(pixels_to_tensor(images))

    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [-1, 1] → UNet-space latents [B, 4, H/8, W/8] (the distribution's mode × scaling)."""
        vae = self.components.vae
        with torch.inference_mode():
            latents = vae.encode(pixels.to(self.device, vae.dtype)).latent_dist.mode()
            if torch.isnan(latents).any() and vae.dtype != torch.float32:
                log.warning("VAE encoder produced NaNs in %s; encoding again in float32", vae.dtype)
                latents = vae.float().encode(pixels.to(self.device, torch.float32)).latent_dist.mode()
                vae.to(self.dtype)
        return latents * vae.config.scaling_factor

    def preview(self, latents: torch.Tensor) -> Image.Image:
        """A quick RGB picture of UNet-space latents [1, 4, h, w] for the live preview."""
        with torch.inference_mode():
            if self.preview_decoder is not None:
                decoded = self.preview_decoder.decode(latents.to(self.preview_decoder.dtype)).sample[0]
                rgb = (decoded.float().clamp(-1, 1) + 1) / 2
            elif latents.shape[-1] * latents.shape[-2] <= FULL_DECODE_PREVIEW_MAX_LATENT:
                vae = self.components.vae
                decoded = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample[0]
                rgb = (decoded.float().clamp(-1, 1) + 1) / 2
            else:
                factors = torch.tensor(CHEAP_APPROX["sdxl" if self.kind == "sdxl" else "sd"], device=latents.device)
                rgb = ((torch.einsum("chw,cr->rhw", latents[0].float(), factors) + 1) / 2).clamp(0, 1)
        array = (rgb.permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
        return Image.fromarray(array)



def pixels_to_tensor(images: list[Image.Image]) -> torch.Tensor:
    """RGB images of one size → [B, 3, H, W] float32 in [-1, 1] (x / 127.5 − 1)."""
    pixels = torch.stack([torch.from_numpy(np.array(image.convert("RGB"))) for image in images])
    return pixels.permute(0, 3, 1, 2).float() / 127.5 - 1
