"""Pydantic models of the /sdapi/v1 requests and responses: A1111 field names, defaults and shapes, plus bounds.

Unknown request fields are ignored (A1111's own HTTP tests and many clients send extra keys); values outside the
bounds of security notes §5 are rejected with HTTP 422 naming the field, before any work is queued.
"""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from modules.engine.request import MASKED_CONTENT, MAX_BATCH_SIZE, MAX_SIZE, MAX_STEPS, MIN_SIZE, RESIZE_MODES

MAX_PROMPT_CHARS = 20_000
MAX_STYLES = 50
MAX_IMAGES_PER_REQUEST = 64
MAX_SEED = 2**32 - 1
MAX_N_ITER = 100
MAX_INIT_IMAGES = 16


class ApiRequest(BaseModel):
    """Base of every request body: extra keys ignored, NaN/Inf rejected (json.loads accepts `NaN`)."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


def _size(default: int, description: str) -> Any:
    return Field(default, ge=MIN_SIZE, le=MAX_SIZE, multiple_of=8, description=description)


class GenerationApiRequest(ApiRequest):
    """The fields txt2img and img2img share (A1111 StableDiffusionProcessing)."""

    prompt: str = Field("", max_length=MAX_PROMPT_CHARS)
    negative_prompt: str = Field("", max_length=MAX_PROMPT_CHARS)
    styles: list[str] | None = Field(None, max_length=MAX_STYLES, description="names from styles.csv")
    seed: int = Field(-1, ge=-1, le=MAX_SEED, description="-1 = random")
    subseed: int = Field(-1, ge=-1, le=MAX_SEED)
    subseed_strength: float = Field(0.0, ge=0.0, le=1.0)
    seed_resize_from_h: int = Field(-1, ge=-1, le=MAX_SIZE, description="-1 or 0 = off")
    seed_resize_from_w: int = Field(-1, ge=-1, le=MAX_SIZE, description="-1 or 0 = off")
    sampler_name: str | None = Field(None, description="display name, alias or legacy 'DPM++ 2M Karras' form")
    sampler_index: str | None = Field("Euler", description="legacy; used when sampler_name is not given")
    scheduler: str | None = Field(None, description="schedule type id, label or alias; null = Automatic")
    batch_size: int = Field(1, ge=1, le=MAX_BATCH_SIZE)
    n_iter: int = Field(1, ge=1, le=MAX_N_ITER, description="batch count")
    steps: int = Field(50, ge=1, le=MAX_STEPS)
    cfg_scale: float = Field(7.0, ge=0.0, le=30.0)
    width: int = _size(512, "image width, a multiple of 8")
    height: int = _size(512, "image height, a multiple of 8")
    restore_faces: bool | None = Field(None, description="accepted, not supported (ignored)")
    tiling: bool | None = Field(None, description="accepted, not supported (ignored)")
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    eta: float | None = None
    denoising_strength: float | None = Field(0.75, ge=0.0, le=1.0,
                                             description="img2img: how much to change; txt2img: hires fix strength")
    s_min_uncond: float | None = None
    s_churn: float | None = None
    s_tmax: float | None = None
    s_tmin: float | None = None
    s_noise: float | None = None
    override_settings: dict[str, Any] | None = Field(
        None, description="per-request settings: sd_model_checkpoint, sd_vae, CLIP_stop_at_last_layers")
    override_settings_restore_afterwards: bool = True
    refiner_checkpoint: str | None = None
    refiner_switch_at: float | None = None
    disable_extra_networks: bool = False
    comments: dict[str, Any] | None = None
    force_task_id: str | None = Field(None, max_length=200)
    script_name: str | None = Field(None, description="title of a selectable script (see /sdapi/v1/scripts)")
    script_args: list[Any] = Field(default_factory=list, description="the script's positional arguments")
    send_images: bool = True
    save_images: bool = False
    alwayson_scripts: dict[str, Any] = Field(default_factory=dict)
    infotext: str | None = Field(None, max_length=MAX_PROMPT_CHARS * 2,
                                 description="A1111 infotext; fills the fields this request leaves unset")

    @model_validator(mode="after")
    def _image_count(self) -> GenerationApiRequest:
        total = self.batch_size * self.n_iter
        if total > MAX_IMAGES_PER_REQUEST:
            raise ValueError(f"batch_size × n_iter must be at most {MAX_IMAGES_PER_REQUEST} images, got {total}")
        return self


class Txt2ImgRequest(GenerationApiRequest):
    """POST /sdapi/v1/txt2img (A1111 StableDiffusionTxt2ImgProcessingAPI)."""

    firstpass_image: str | None = None
    enable_hr: bool = False
    firstphase_width: int = Field(0, ge=0, le=MAX_SIZE, description="legacy first-pass size for enable_hr")
    firstphase_height: int = Field(0, ge=0, le=MAX_SIZE)
    hr_scale: float = Field(2.0, ge=1.0, le=4.0)
    hr_upscaler: str | None = Field(None, description="null = Latent")
    hr_second_pass_steps: int = Field(0, ge=0, le=MAX_STEPS, description="0 = same as steps")
    hr_resize_x: int = Field(0, ge=0, le=MAX_SIZE)
    hr_resize_y: int = Field(0, ge=0, le=MAX_SIZE)
    hr_checkpoint_name: str | None = None
    hr_sampler_name: str | None = None
    hr_scheduler: str | None = None
    hr_prompt: str = Field("", max_length=MAX_PROMPT_CHARS)
    hr_negative_prompt: str = Field("", max_length=MAX_PROMPT_CHARS)


class Img2ImgRequest(GenerationApiRequest):
    """POST /sdapi/v1/img2img (A1111 StableDiffusionImg2ImgProcessingAPI); images are base64, data URIs allowed."""

    init_images: list[str] | None = Field(None, max_length=MAX_INIT_IMAGES,
                                          description="required; used in turn across the batch")
    resize_mode: int = Field(0, ge=0, le=len(RESIZE_MODES) - 1, description=", ".join(
        f"{index} {label}" for index, label in enumerate(RESIZE_MODES)))
    image_cfg_scale: float | None = Field(None, description="instruct-pix2pix only; accepted and ignored")
    mask: str | None = Field(None, description="inpaint mask, white = repaint (or the alpha channel of an RGBA mask)")
    mask_blur: int | None = Field(None, ge=0, le=64, description="sets mask_blur_x and mask_blur_y")
    mask_blur_x: int = Field(4, ge=0, le=64)
    mask_blur_y: int = Field(4, ge=0, le=64)
    mask_round: bool = Field(True, description="threshold a mask taken from an alpha channel at 50 %")
    inpainting_fill: int = Field(0, ge=0, le=len(MASKED_CONTENT) - 1, description=", ".join(
        f"{index} {label}" for index, label in enumerate(MASKED_CONTENT)))
    inpaint_full_res: bool = Field(True, description="true = only masked (the API default), false = whole picture")
    inpaint_full_res_padding: int = Field(0, ge=0, le=256, description="pixels of context around the mask")
    inpainting_mask_invert: int = Field(0, ge=0, le=1, description="1 / true = inpaint not masked")
    initial_noise_multiplier: float | None = Field(None, ge=0.0, le=1.5, description="null = 1.0")
    latent_mask: str | None = Field(None, description="accepted and ignored")
    include_init_images: bool = Field(False, description="echo init_images and mask in the response parameters")


class ImageResponse(BaseModel):
    images: list[str] = Field(description="raw base64 images (no data-URI prefix); images[0] is the grid if any")
    parameters: dict[str, Any] = Field(description="the request, with defaults")
    info: str = Field(description="A1111 info object as a JSON string")


class PngInfoRequest(ApiRequest):
    image: str = Field("", description="base64 image, with or without a data:image/...;base64, prefix")


class PngInfoResponse(BaseModel):
    info: str = Field(description="the infotext ('' when the image has none)")
    items: dict[str, Any] = Field(description="other text chunks of the image")
    parameters: dict[str, Any] = Field(description="the infotext parsed as A1111 does")


class ProgressState(BaseModel):
    skipped: bool = False
    interrupted: bool = False
    stopping_generation: bool = False
    job: str = ""
    job_count: int = 0
    job_timestamp: str = "0"
    job_no: int = 0
    sampling_step: int = 0
    sampling_steps: int = 0


class ProgressResponse(BaseModel):
    progress: float = Field(description="0..1 for the running job; 0 when idle")
    eta_relative: float
    state: ProgressState
    current_image: str | None = Field(None, description="base64 PNG of the live preview")
    textinfo: str | None = None


class SdModelItem(BaseModel):
    title: str
    model_name: str
    hash: str | None
    sha256: str | None
    filename: str
    config: str | None = None


class SdVaeItem(BaseModel):
    model_name: str
    filename: str


class SamplerItem(BaseModel):
    name: str
    aliases: list[str]
    options: dict[str, Any]


class SchedulerItem(BaseModel):
    name: str
    label: str
    aliases: list[str] | None
    default_rho: float
    need_inner_model: bool


class UpscalerItem(BaseModel):
    name: str
    model_name: str | None
    model_path: str | None
    model_url: str | None
    scale: float | None


class LatentUpscaleModeItem(BaseModel):
    name: str


class PromptStyleItem(BaseModel):
    name: str
    prompt: str | None
    negative_prompt: str | None


class EmbeddingsResponse(BaseModel):
    loaded: dict[str, Any] = Field(default_factory=dict)
    skipped: dict[str, Any] = Field(default_factory=dict)


class LoraItem(BaseModel):
    name: str
    alias: str
    path: str
    metadata: dict[str, Any] = Field(default_factory=dict)


class ScriptsList(BaseModel):
    txt2img: list[str] = Field(default_factory=list)
    img2img: list[str] = Field(default_factory=list)


class ScriptArg(BaseModel):
    label: str
    value: Any = None
    minimum: Any = None
    maximum: Any = None
    step: Any = None
    choices: list[str] | None = None


class ScriptInfo(BaseModel):
    name: str = Field(description="the script's title in lower case, as A1111 lists it")
    is_alwayson: bool = False
    is_img2img: bool = False
    args: list[ScriptArg] = Field(default_factory=list, description="positional script_args, in order")


class MemoryResponse(BaseModel):
    ram: dict[str, Any] = Field(description="free, used, total bytes")
    cuda: dict[str, Any] = Field(description="system/active/allocated/reserved/inactive/events, or error")
    models: dict[str, Any] = Field(default_factory=dict, description="checkpoints held in RAM, resident one")


class ErrorResponse(BaseModel):
    error: str
    detail: Any = ""
    body: Any = ""
    errors: Any = ""
