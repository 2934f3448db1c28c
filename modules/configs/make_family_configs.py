"""Write the JSON-only diffusers-format config folders in ``modules/configs/<family>/``.

Why: loading must never reach the Hub, so every family's configs ship with the app. The values come
from the official LDM yamls / Hugging Face reference configs (see shared/notes/engine-facts.md §2).
The loader reads the architecture from the weights and uses these files only for what weights cannot
say (scheduler, prediction type, attention head layout, tokenizer specials). Run once after editing:

    python modules/configs/make_family_configs.py
"""

from __future__ import annotations

import json
from pathlib import Path

CONFIG_ROOT = Path(__file__).resolve().parent
DIFFUSERS_VERSION = "0.42.1"

SD_BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
            "num_train_timesteps": 1000, "trained_betas": None}


def scheduler_config(class_name: str, prediction_type: str) -> dict:
    config = {"_class_name": class_name, "_diffusers_version": DIFFUSERS_VERSION, **SD_BETAS,
              "prediction_type": prediction_type, "steps_offset": 1, "timestep_spacing": "leading",
              "clip_sample": False, "set_alpha_to_one": False, "rescale_betas_zero_snr": False}
    if class_name == "PNDMScheduler":
        config["skip_prk_steps"] = True
    if class_name == "EulerDiscreteScheduler":
        config.update(interpolation_type="linear", use_karras_sigmas=False, sample_max_value=1.0)
        del config["clip_sample"], config["set_alpha_to_one"]
    return config


def unet_config(*, block_out_channels: list[int], attention_head_dim, cross_attention_dim: int,
                use_linear_projection: bool, sample_size: int, in_channels: int = 4,
                transformer_layers_per_block=1, addition_in_dim: int | None = None,
                down_block_types: list[str], up_block_types: list[str],
                upcast_attention: bool = False) -> dict:
    config = {
        "_class_name": "UNet2DConditionModel", "_diffusers_version": DIFFUSERS_VERSION,
        "act_fn": "silu", "attention_head_dim": attention_head_dim, "block_out_channels": block_out_channels,
        "center_input_sample": False, "cross_attention_dim": cross_attention_dim,
        "down_block_types": down_block_types, "downsample_padding": 1, "flip_sin_to_cos": True,
        "freq_shift": 0, "in_channels": in_channels, "layers_per_block": 2, "mid_block_scale_factor": 1,
        "mid_block_type": "UNetMidBlock2DCrossAttn", "norm_eps": 1e-05, "norm_num_groups": 32,
        "out_channels": 4, "sample_size": sample_size, "transformer_layers_per_block": transformer_layers_per_block,
        "up_block_types": up_block_types, "upcast_attention": upcast_attention,
        "use_linear_projection": use_linear_projection,
    }
    if addition_in_dim is not None:
        # pooled text embedding (1280) + 256-dim Fourier features of each micro-conditioning time id
        config.update(addition_embed_type="text_time", addition_embed_type_num_heads=64,
                      addition_time_embed_dim=256, projection_class_embeddings_input_dim=addition_in_dim)
    return config


SD_DOWN = ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"]
SD_UP = ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3
XL_DOWN = ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"]
XL_UP = ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"]
REFINER_DOWN = ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"]
REFINER_UP = ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"]


def sd1_unet(in_channels: int) -> dict:
    return unet_config(block_out_channels=[320, 640, 1280, 1280], attention_head_dim=8, cross_attention_dim=768,
                       use_linear_projection=False, sample_size=64, in_channels=in_channels,
                       down_block_types=SD_DOWN, up_block_types=SD_UP)


def sd2_unet(sample_size: int, upcast_attention: bool) -> dict:
    return unet_config(block_out_channels=[320, 640, 1280, 1280], attention_head_dim=[5, 10, 20, 20],
                       cross_attention_dim=1024, use_linear_projection=True, sample_size=sample_size,
                       down_block_types=SD_DOWN, up_block_types=SD_UP, upcast_attention=upcast_attention)


def sdxl_unet(in_channels: int) -> dict:
    return unet_config(block_out_channels=[320, 640, 1280], attention_head_dim=[5, 10, 20], cross_attention_dim=2048,
                       use_linear_projection=True, sample_size=128, in_channels=in_channels,
                       transformer_layers_per_block=[1, 2, 10], addition_in_dim=2816,
                       down_block_types=XL_DOWN, up_block_types=XL_UP)


def refiner_unet() -> dict:
    return unet_config(block_out_channels=[384, 768, 1536, 1536], attention_head_dim=[6, 12, 24, 24],
                       cross_attention_dim=1280, use_linear_projection=True, sample_size=128,
                       transformer_layers_per_block=4, addition_in_dim=2560,
                       down_block_types=REFINER_DOWN, up_block_types=REFINER_UP)


def vae_config(scaling_factor: float, sample_size: int, force_upcast: bool) -> dict:
    return {"_class_name": "AutoencoderKL", "_diffusers_version": DIFFUSERS_VERSION, "act_fn": "silu",
            "block_out_channels": [128, 256, 512, 512], "down_block_types": ["DownEncoderBlock2D"] * 4,
            "force_upcast": force_upcast, "in_channels": 3, "latent_channels": 4, "layers_per_block": 2,
            "norm_num_groups": 32, "out_channels": 3, "sample_size": sample_size, "scaling_factor": scaling_factor,
            "up_block_types": ["UpDecoderBlock2D"] * 4}


def text_encoder_config(*, architecture: str, hidden: int, intermediate: int, layers: int, heads: int,
                        activation: str, projection: int) -> dict:
    # bos 0 / eos 2 / pad 1 are the legacy ids of the original configs: eos_token_id == 2 makes
    # transformers pool at argmax(input_ids) (= the real eos 49407), as the original models did.
    return {"architectures": [architecture], "attention_dropout": 0.0, "bos_token_id": 0, "dropout": 0.0,
            "eos_token_id": 2, "hidden_act": activation, "hidden_size": hidden, "initializer_factor": 1.0,
            "initializer_range": 0.02, "intermediate_size": intermediate, "layer_norm_eps": 1e-05,
            "max_position_embeddings": 77, "model_type": "clip_text_model", "num_attention_heads": heads,
            "num_hidden_layers": layers, "pad_token_id": 1, "projection_dim": projection, "vocab_size": 49408}


CLIP_L = text_encoder_config(architecture="CLIPTextModel", hidden=768, intermediate=3072, layers=12, heads=12,
                             activation="quick_gelu", projection=768)
OPEN_CLIP_H = text_encoder_config(architecture="CLIPTextModel", hidden=1024, intermediate=4096, layers=23, heads=16,
                                  activation="gelu", projection=512)
OPEN_CLIP_BIG_G = text_encoder_config(architecture="CLIPTextModelWithProjection", hidden=1280, intermediate=5120,
                                      layers=32, heads=20, activation="gelu", projection=1280)


def tokenizer_files(pad_token: str) -> dict[str, dict]:
    specials = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
                "pad_token": pad_token}
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True,
              "add_prefix_space": False, "errors": "replace", **specials}
    return {"tokenizer_config.json": config, "special_tokens_map.json": specials}


def model_index(pipeline: str, scheduler: str, *, te1: bool = True, te2: bool = False, **extra) -> dict:
    null = [None, None]
    index = {"_class_name": pipeline, "_diffusers_version": DIFFUSERS_VERSION,
             "feature_extractor": null, "image_encoder": null, "requires_safety_checker": False, "safety_checker": null,
             "scheduler": ["diffusers", scheduler],
             "text_encoder": ["transformers", "CLIPTextModel"] if te1 else null,
             "tokenizer": ["transformers", "CLIPTokenizer"] if te1 else null,
             "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"], **extra}
    if te2:
        index["text_encoder_2"] = ["transformers", "CLIPTextModelWithProjection"]
        index["tokenizer_2"] = ["transformers", "CLIPTokenizer"]
    if pipeline.startswith("StableDiffusionXL"):
        index.pop("safety_checker"), index.pop("requires_safety_checker")
    return index


def family_files() -> dict[str, dict[str, dict]]:
    """family → {relative file path → JSON content}."""
    sd_vae = vae_config(0.18215, 512, force_upcast=False)
    xl_vae = vae_config(0.13025, 1024, force_upcast=True)
    xl_index = {"force_zeros_for_empty_prompt": True, "add_watermarker": False}
    families: dict[str, dict[str, dict]] = {}

    def sd_family(unet: dict, te: dict, pad: str, scheduler: str, prediction: str) -> dict[str, dict]:
        files = {"model_index.json": model_index("StableDiffusionPipeline", scheduler),
                 "scheduler/scheduler_config.json": scheduler_config(scheduler, prediction),
                 "unet/config.json": unet, "vae/config.json": sd_vae, "text_encoder/config.json": te}
        files.update({f"tokenizer/{name}": content for name, content in tokenizer_files(pad).items()})
        return files

    families["sd15"] = sd_family(sd1_unet(4), CLIP_L, "<|endoftext|>", "PNDMScheduler", "epsilon")
    families["sd15-inpaint"] = sd_family(sd1_unet(9), CLIP_L, "<|endoftext|>", "PNDMScheduler", "epsilon")
    families["sd2-v"] = sd_family(sd2_unet(96, True), OPEN_CLIP_H, "!", "DDIMScheduler", "v_prediction")
    families["sd2-base"] = sd_family(sd2_unet(64, False), OPEN_CLIP_H, "!", "DDIMScheduler", "epsilon")

    def xl_family(unet: dict, pipeline: str, te1: bool, extra: dict) -> dict[str, dict]:
        files = {"model_index.json": model_index(pipeline, "EulerDiscreteScheduler", te1=te1, te2=True, **extra),
                 "scheduler/scheduler_config.json": scheduler_config("EulerDiscreteScheduler", "epsilon"),
                 "unet/config.json": unet, "vae/config.json": xl_vae,
                 "text_encoder_2/config.json": OPEN_CLIP_BIG_G}
        files.update({f"tokenizer_2/{name}": content for name, content in tokenizer_files("!").items()})
        if te1:
            files["text_encoder/config.json"] = CLIP_L
            files.update({f"tokenizer/{name}": c for name, c in tokenizer_files("<|endoftext|>").items()})
        return files

    families["sdxl"] = xl_family(sdxl_unet(4), "StableDiffusionXLPipeline", True, xl_index)
    families["sdxl-inpaint"] = xl_family(sdxl_unet(9), "StableDiffusionXLInpaintPipeline", True, xl_index)
    families["sdxl-refiner"] = xl_family(refiner_unet(), "StableDiffusionXLImg2ImgPipeline", False,
                                         {"force_zeros_for_empty_prompt": False, "add_watermarker": False,
                                          "requires_aesthetics_score": True})
    families["controlnet-sd15"] = {"config.json": controlnet_config(sd1_unet(4))}
    families["controlnet-sdxl"] = {"config.json": controlnet_config(sdxl_unet(4))}
    return families


def controlnet_config(unet: dict) -> dict:
    """What ``ControlNetModel.from_unet(unet)`` would write (conditioning embedding channels fixed: the
    single-file converter hard-codes ``input_hint_block.14``)."""
    skip = {"_class_name", "out_channels", "sample_size", "up_block_types", "center_input_sample"}
    config = {key: value for key, value in unet.items() if key not in skip}
    config.update(_class_name="ControlNetModel", conditioning_channels=3,
                  conditioning_embedding_out_channels=[16, 32, 96, 256],
                  controlnet_conditioning_channel_order="rgb", global_pool_conditions=False)
    return config


def main() -> None:
    for family, files in family_files().items():
        for relative_path, content in files.items():
            target = CONFIG_ROOT / family / relative_path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    print(f"wrote {len(family_files())} config folders under {CONFIG_ROOT}")


if __name__ == "__main__":
    main()
