"""ControlNet preprocessors (A1111 ControlNet extension names) and the control-map geometry around them.

`PREPROCESSORS` lists every module: its A1111 id (`hed`) and UI alias (`softedge_hed`), its sliders (processor
resolution and up to two thresholds, as `/controlnet/module_list` reports them) and the annotator files it needs
in models/annotators (none for none, invert, canny, shuffle and lineart_standard, which are computed here).
The others run controlnet_aux detectors that the service layer (modules/models/annotators.py) loads from local
files; they are called on an image padded to multiples of 64 at the processor resolution, exactly as the extension
does (`resize_image_with_pad`), so the detectors' own resizing is the identity.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
from PIL import Image

from modules.engine.request import CONTROL_RESIZE_MODES

JUST_RESIZE, CROP_AND_RESIZE, RESIZE_AND_FILL = range(len(CONTROL_RESIZE_MODES))
RESOLUTION_SLIDER = "Preprocessor Resolution"
DEFAULT_RESOLUTION = 512
SHUFFLE_NOISE_CELL = 256  # content shuffle: the flow field is smooth noise on 256-pixel cells


class PreprocessorError(ValueError):
    """A preprocessor is unknown, lacks its weights, or failed; the message says which and why."""


@dataclass(frozen=True)
class Slider:
    name: str
    value: float
    minimum: float
    maximum: float
    step: float | None = None

    def as_api(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name, "value": self.value, "min": self.minimum, "max": self.maximum}
        if self.step is not None:
            data["step"] = self.step
        return data


RESOLUTION = Slider(RESOLUTION_SLIDER, DEFAULT_RESOLUTION, 64, 2048)


@dataclass(frozen=True)
class PreprocessorSpec:
    name: str  # A1111 id, e.g. "hed"
    label: str  # UI alias, e.g. "softedge_hed"
    control_type: str  # tab of /controlnet/control_types
    sliders: tuple[Slider, ...] = ()  # resolution first (if any), then threshold A, threshold B
    files: tuple[str, ...] = ()  # annotator weights it needs, all in one folder
    detector: str = ""  # "module:Class" in controlnet_aux
    load_kwargs: dict[str, str] = field(default_factory=dict)  # from_pretrained(folder, **load_kwargs)
    call_kwargs: dict[str, Any] = field(default_factory=dict)  # detector(image, **call_kwargs)
    threshold_kwargs: tuple[str, ...] = ()  # detector keyword names threshold A / B feed

    @property
    def has_resolution(self) -> bool:
        return bool(self.sliders) and self.sliders[0].name == RESOLUTION_SLIDER

    @property
    def thresholds(self) -> tuple[Slider, ...]:
        return self.sliders[1:] if self.has_resolution else self.sliders

    def threshold_values(self, threshold_a: float | None, threshold_b: float | None) -> tuple[float | None, ...]:
        """The thresholds this module uses: given values, or the slider defaults (unused ones are None)."""
        given = (threshold_a, threshold_b)
        return tuple(given[i] if given[i] is not None else slider.value for i, slider in enumerate(self.thresholds))


def _weighted(name: str, label: str, control_type: str, files: tuple[str, ...], detector: str,
              sliders: tuple[Slider, ...] = (RESOLUTION,), **extra: Any) -> PreprocessorSpec:
    return PreprocessorSpec(name, label, control_type, sliders, files, detector, **extra)


_OPENPOSE_FILES = ("body_pose_model.pth", "hand_pose_model.pth", "facenet.pth")
_LINEART_FILES = ("sk_model.pth", "sk_model2.pth")
_LERES_SLIDERS = (RESOLUTION, Slider("Remove Near %", 0, 0, 100, 0.1), Slider("Remove Background %", 0, 0, 100, 0.1))
_MLSD_SLIDERS = (RESOLUTION, Slider("MLSD Value Threshold", 0.1, 0.01, 2.0, 0.01),
                 Slider("MLSD Distance Threshold", 0.1, 0.01, 20.0, 0.01))


def _openpose(name: str, hand: bool, face: bool, body: bool = True) -> PreprocessorSpec:
    return _weighted(name, name, "OpenPose", _OPENPOSE_FILES, "controlnet_aux.open_pose:OpenposeDetector",
                     call_kwargs={"include_body": body, "include_hand": hand, "include_face": face})


PREPROCESSORS: tuple[PreprocessorSpec, ...] = (
    PreprocessorSpec("none", "none", "All"),
    PreprocessorSpec("invert", "invert (from white bg & black line)", "Lineart"),
    PreprocessorSpec("canny", "canny", "Canny", (RESOLUTION, Slider("Canny Low Threshold", 100, 1, 255),
                                                  Slider("Canny High Threshold", 200, 1, 255))),
    PreprocessorSpec("shuffle", "shuffle", "Shuffle", (RESOLUTION,)),
    PreprocessorSpec("lineart_standard", "lineart_standard (from white bg & black line)", "Lineart", (RESOLUTION,)),
    _weighted("hed", "softedge_hed", "SoftEdge", ("ControlNetHED.pth",), "controlnet_aux.hed:HEDdetector",
              load_kwargs={"filename": "ControlNetHED.pth"}, call_kwargs={"safe": False}),
    _weighted("pidinet", "softedge_pidinet", "SoftEdge", ("table5_pidinet.pth",), "controlnet_aux.pidi:PidiNetDetector",
              load_kwargs={"filename": "table5_pidinet.pth"}, call_kwargs={"safe": False, "apply_filter": False}),
    _weighted("lineart", "lineart_realistic", "Lineart", _LINEART_FILES, "controlnet_aux.lineart:LineartDetector",
              call_kwargs={"coarse": False}),
    _weighted("lineart_coarse", "lineart_coarse", "Lineart", _LINEART_FILES, "controlnet_aux.lineart:LineartDetector",
              call_kwargs={"coarse": True}),
    _weighted("lineart_anime", "lineart_anime", "Lineart", ("netG.pth",),
              "controlnet_aux.lineart_anime:LineartAnimeDetector"),
    _weighted("mlsd", "mlsd", "MLSD", ("mlsd_large_512_fp32.pth",), "controlnet_aux.mlsd:MLSDdetector", _MLSD_SLIDERS,
              threshold_kwargs=("thr_v", "thr_d")),
    _weighted("depth", "depth_midas", "Depth", ("dpt_hybrid-midas-501f0c75.pt",), "controlnet_aux.midas:MidasDetector"),
    _weighted("depth_zoe", "depth_zoe", "Depth", ("ZoeD_M12_N.pt",), "controlnet_aux.zoe:ZoeDetector"),
    _weighted("depth_leres", "depth_leres", "Depth", ("res101.pth", "latest_net_G.pth"),
              "controlnet_aux.leres:LeresDetector", _LERES_SLIDERS, threshold_kwargs=("thr_a", "thr_b")),
    _weighted("normal_bae", "normal_bae", "NormalMap", ("scannet.pt",), "controlnet_aux.normalbae:NormalBaeDetector"),
    _openpose("openpose", hand=False, face=False),
    _openpose("openpose_hand", hand=True, face=False),
    _openpose("openpose_face", hand=False, face=True),
    _openpose("openpose_faceonly", hand=False, face=True, body=False),
    _openpose("openpose_full", hand=True, face=True),
)


def find_preprocessor(module: str) -> PreprocessorSpec:
    """By A1111 id or UI alias (any case); "None"/"" mean none."""
    wanted = (module or "none").strip().lower()
    for spec in PREPROCESSORS:
        if wanted in (spec.name, spec.label.lower(), spec.label.split(" ")[0].lower()):
            return spec
    names = ", ".join(spec.label for spec in PREPROCESSORS)
    raise PreprocessorError(f"ControlNet preprocessor {module!r} not found; available: {names}")


# ---------------------------------------------------------------- geometry (A1111 extension semantics)


def hwc3(image: np.ndarray) -> np.ndarray:
    """uint8 H×W×3: grey is repeated, alpha is composited over white."""
    if image.ndim == 2:
        image = image[:, :, None]
    if image.shape[2] == 1:
        return np.concatenate([image] * 3, axis=2)
    if image.shape[2] == 4:
        alpha = image[:, :, 3:4].astype(np.float32) / 255.0
        return (image[:, :, :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)).clip(0, 255).astype(np.uint8)
    return image


def to_array(image: Image.Image) -> np.ndarray:
    return hwc3(np.asarray(image.convert("RGBA") if "A" in image.getbands() else image.convert("RGB")))


def resize_with_pad(image: np.ndarray, resolution: int) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    """Short side → `resolution` (cubic up, area down), then edge-pad to multiples of 64; returns the padded image
    and the function that cuts a result back to the unpadded size (extension resize_image_with_pad)."""
    height, width = image.shape[:2]
    k = resolution / min(height, width)
    target_h, target_w = int(np.round(height * k)), int(np.round(width * k))
    resized = cv2.resize(image, (target_w, target_h), interpolation=cv2.INTER_CUBIC if k > 1 else cv2.INTER_AREA)
    pad_h, pad_w = -target_h % 64, -target_w % 64
    padded = np.pad(resized, [[0, pad_h], [0, pad_w], [0, 0]], mode="edge")
    return padded, lambda result: np.ascontiguousarray(result[:target_h, :target_w])


def pixel_perfect_resolution(image_size: tuple[int, int], width: int, height: int, resize_mode: int) -> int:
    """Extension formula: k = target / raw per axis; Resize and Fill uses min(k), others max(k);
    resolution = round(k · min(raw_h, raw_w))."""
    raw_w, raw_h = image_size
    k_h, k_w = height / raw_h, width / raw_w
    k = min(k_h, k_w) if resize_mode == RESIZE_AND_FILL else max(k_h, k_w)
    return int(np.round(k * min(raw_h, raw_w)))


def high_quality_resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """lvmin's control-map resize: nearest for few-colour maps (segmentation), area to shrink, cubic to enlarge;
    binary maps (edges) are re-thresholded with Otsu so lines stay crisp (the extension also thins one-pixel
    edges, which is not reproduced)."""
    if image.shape[:2] == (height, width):
        return image
    colours = len(np.unique(image.reshape(-1, image.shape[2]), axis=0))
    binary = colours == 2 and image.min() < 16 and image.max() > 240
    if 2 < colours < 200:
        interpolation = cv2.INTER_NEAREST
    elif width * height < image.shape[0] * image.shape[1]:
        interpolation = cv2.INTER_AREA
    else:
        interpolation = cv2.INTER_CUBIC
    resized = cv2.resize(image, (width, height), interpolation=interpolation)
    if binary:
        grey = np.mean(resized.astype(np.float32), axis=2).clip(0, 255).astype(np.uint8)
        _, grey = cv2.threshold(grey, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        resized = np.stack([grey] * 3, axis=2)
    return resized


def fit_control_map(control_map: np.ndarray, resize_mode: int, width: int, height: int) -> np.ndarray:
    """The detected map at the generation size (extension detectmap_proc): stretch, cover + centre-crop, or fit
    inside + fill the bars with the median border colour."""
    if resize_mode == JUST_RESIZE:
        return high_quality_resize(control_map, width, height)
    old_h, old_w = control_map.shape[:2]
    k = (min if resize_mode == RESIZE_AND_FILL else max)(height / old_h, width / old_w)
    scaled = high_quality_resize(control_map, int(np.round(old_w * k)), int(np.round(old_h * k)))
    new_h, new_w = scaled.shape[:2]
    if resize_mode == RESIZE_AND_FILL:
        borders = np.concatenate([control_map[0], control_map[-1], control_map[:, 0], control_map[:, -1]], axis=0)
        canvas = np.tile(np.median(borders, axis=0).astype(control_map.dtype)[None, None], [height, width, 1])
        top, left = max(0, (height - new_h) // 2), max(0, (width - new_w) // 2)
        canvas[top:top + new_h, left:left + new_w] = scaled
        return canvas
    top, left = max(0, (new_h - height) // 2), max(0, (new_w - width) // 2)
    return np.ascontiguousarray(scaled[top:top + height, left:left + width])


# ---------------------------------------------------------------- preprocessors without weights


def canny(image: np.ndarray, resolution: int, low: float, high: float) -> np.ndarray:
    padded, unpad = resize_with_pad(image, resolution)
    return hwc3(unpad(cv2.Canny(padded, int(low), int(high))))


def lineart_standard(image: np.ndarray, resolution: int) -> np.ndarray:
    """Lines = how much darker a pixel is than its blurred surroundings (σ 6), scaled by the median line."""
    padded, unpad = resize_with_pad(image, resolution)
    pixels = padded.astype(np.float32)
    intensity = np.min(cv2.GaussianBlur(pixels, (0, 0), 6.0) - pixels, axis=2).clip(0, 255)
    lines = intensity[intensity > 8]
    intensity /= max(16.0, float(np.median(lines)) if lines.size else 0.0)
    return hwc3(unpad((intensity * 127).clip(0, 255).astype(np.uint8)))


def smooth_noise(rng: np.random.RandomState, height: int, width: int, cell: int) -> np.ndarray:
    """Uniform noise on a grid of `cell`-pixel cells, cubic-interpolated and normalised to 0..1."""
    noise = rng.uniform(0, 1, size=(height // cell + 2, width // cell + 2))
    noise = cv2.resize(noise, (width + 2 * cell, height + 2 * cell), interpolation=cv2.INTER_CUBIC)
    noise = noise[cell:cell + height, cell:cell + width]
    noise -= noise.min()
    return noise / max(noise.max(), 1e-12)


def content_shuffle(image: np.ndarray, resolution: int, seed: int) -> np.ndarray:
    """Remap pixels along a smooth random flow field (seeded: the extension seeds numpy from the job's seeds)."""
    padded, unpad = resize_with_pad(image, resolution)
    image = unpad(padded)
    height, width = image.shape[:2]
    rng = np.random.RandomState(seed & 0xFFFFFFFF)
    flow_x = smooth_noise(rng, height, width, SHUFFLE_NOISE_CELL) * (width - 1)
    flow_y = smooth_noise(rng, height, width, SHUFFLE_NOISE_CELL) * (height - 1)
    flow = np.stack([flow_x, flow_y], axis=2).astype(np.float32)
    return cv2.remap(image, flow, None, cv2.INTER_LINEAR)


def run_builtin(spec: PreprocessorSpec, image: np.ndarray, *, resolution: int, threshold_a: float | None,
                threshold_b: float | None, seed: int) -> np.ndarray:
    """The preprocessors computed here; `image` is H×W×3 uint8 RGB."""
    if spec.name == "none":
        return image
    if spec.name == "invert":
        return 255 - image
    if spec.name == "canny":
        low, high = spec.threshold_values(threshold_a, threshold_b)
        return canny(image, resolution, float(low), float(high))  # type: ignore[arg-type]
    if spec.name == "shuffle":
        return content_shuffle(image, resolution, seed)
    if spec.name == "lineart_standard":
        return lineart_standard(image, resolution)
    raise PreprocessorError(f"{spec.label} needs annotator weights")


def run_detector(spec: PreprocessorSpec, detector: Callable[..., Any], image: np.ndarray, *, resolution: int,
                 threshold_a: float | None, threshold_b: float | None) -> np.ndarray:
    """A controlnet_aux detector on the padded image; its own resize steps are the identity at that size."""
    padded, unpad = resize_with_pad(image, resolution)
    size = min(padded.shape[:2])
    thresholds = dict(zip(spec.threshold_kwargs, spec.threshold_values(threshold_a, threshold_b)))
    result = detector(padded, detect_resolution=size, image_resolution=size, output_type="np",
                      **spec.call_kwargs, **thresholds)
    result = np.asarray(result)
    if result.dtype != np.uint8:
        result = result.clip(0, 255).astype(np.uint8)
    if result.shape[:2] != padded.shape[:2]:  # some detectors round sizes their own way
        result = cv2.resize(result, (padded.shape[1], padded.shape[0]), interpolation=cv2.INTER_LINEAR)
    return hwc3(unpad(result))
