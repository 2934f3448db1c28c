"""LoRA files → a model-independent LoraNetwork: per target layer its low-rank factors and scale.

Formats read:
- kohya / A1111: ``lora_unet_*``, ``lora_te_*`` (SD1/SD2), ``lora_te1_*`` / ``lora_te2_*`` (SDXL) with
  ``.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha``; LoCon convolutions; ``.lora_mid`` (CP-decomposed 3×3).
- diffusers / peft: ``unet.*`` / ``text_encoder.*`` / ``text_encoder_2.*`` with ``.lora_A`` / ``.lora_B``,
  ``.lora.down`` / ``.lora.up`` and the legacy attention-processor names (``processor.to_q_lora``).

Target names are kept "flat" (dots → underscores, the kohya convention), so both families of names meet the same
lookup table of the resident model (see lora.py). Networks that are not plain low-rank sums (LoHa, LoKr, IA3, OFT,
DoRA, full weight diffs) cannot be applied as ``W + up·down`` and are refused with a LoraFormatError naming the file.
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

COMPONENTS = ("unet", "text_encoder", "text_encoder_2")
# longest first: lora_te1_ / lora_te2_ must win over lora_te_
KOHYA_PREFIXES = (("lora_unet_", "unet"), ("lora_te1_", "text_encoder"), ("lora_te2_", "text_encoder_2"),
                  ("lora_te_", "text_encoder"))
DOTTED_PREFIXES = (("unet.", "unet"), ("text_encoder_2.", "text_encoder_2"), ("text_encoder.", "text_encoder"))
# diffusers' legacy attention-processor names → module paths
LEGACY_NAMES = ((".processor.to_q_lora.", ".to_q.lora."), (".processor.to_k_lora.", ".to_k.lora."),
                (".processor.to_v_lora.", ".to_v.lora."), (".processor.to_out_lora.", ".to_out.0.lora."),
                (".lora_linear_layer.", ".lora."))

# key pattern → (module part, role). Roles: down, up, mid, alpha, scale.
_FACTOR_PATTERNS = (
    (re.compile(r"^(.+)\.lora_(down|up|mid)\.weight$"), None),
    (re.compile(r"^(.+)\.lora_([AB])(?:\.[A-Za-z0-9_]+)?\.weight$"), {"A": "down", "B": "up"}),
    (re.compile(r"^(.+)\.lora\.(down|up)\.weight$"), None),
    (re.compile(r"^(.+)\.(alpha|scale)$"), None),
)
# what other network types store; any of these refuses the file
UNSUPPORTED_MARKERS = (
    (".hada_", "LoHa"), (".lokr_", "LoKr"), (".on_input", "IA3"), (".oft_", "OFT"), (".boft_", "BOFT"),
    (".dora_scale", "DoRA"), (".lora_magnitude_vector", "DoRA"), (".w_norm", "norm-layer"),
    (".b_norm", "norm-layer"), (".a1.weight", "GLoRA"), (".b1.weight", "GLoRA"),
)
_FULL_DIFF = re.compile(r"\.(diff|diff_b)$")
_BUNDLED_EMBEDDING = "bundle_emb."
PEFT_METADATA_KEY = "lora_adapter_metadata"  # diffusers writes the LoraConfig (r, lora_alpha) here as JSON


class LoraFormatError(ValueError):
    """A LoRA file that cannot be applied faithfully (unsupported network type, unreadable, wrong model)."""


@dataclass
class LoraLayer:
    """One target layer: ΔW = scale · up @ down (or the CP rebuild with `mid`), scale = alpha / rank."""

    component: str | None  # "unet", "text_encoder", "text_encoder_2"; None = not stated (bare peft UNet)
    name: str  # flat module name inside the component, e.g. "down_blocks_0_attentions_0_proj_in"
    down: Tensor
    up: Tensor
    mid: Tensor | None = None
    alpha: float | None = None
    explicit_scale: float | None = None  # a stored "scale" key overrides alpha / rank (LyCORIS files)

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def scale(self) -> float:
        if self.explicit_scale is not None:
            return self.explicit_scale
        return self.alpha / self.rank if self.alpha is not None else 1.0

    def add_to(self, target: Tensor, multiplier: float) -> None:
        """target [out, in·k·k] (float32, in place) += multiplier · ΔW."""
        if self.mid is not None:
            target.add_(self.delta(target.device), alpha=multiplier)
            return
        up = self.up.to(target.device, torch.float32).flatten(1)
        down = self.down.to(target.device, torch.float32).flatten(1)
        target.addmm_(up, down, alpha=multiplier * self.scale)  # one fused pass, no ΔW tensor

    def delta(self, device: torch.device) -> Tensor:
        """ΔW in float32, flattened to [out, in·k·k]; the caller reshapes it to the weight's shape."""
        up = self.up.to(device, torch.float32).flatten(1)  # [out, r]
        down = self.down.to(device, torch.float32).flatten(1)  # [r, in·k·k]
        if self.mid is None:
            return (up @ down) * self.scale
        mid = self.mid.to(device, torch.float32)  # [r, r, k, k]: ΔW[i,j,k,l] = Σ_nm mid[n,m,k,l]·up[i,n]·down[m,j]
        return torch.einsum("nmkl,in,mj->ijkl", mid, up, down).flatten(1) * self.scale

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.down, self.up, self.mid) if t is not None)


@dataclass
class LoraNetwork:
    """A parsed LoRA file, independent of any loaded model."""

    label: str  # the file name, for messages
    layers: list[LoraLayer]
    family: str | None  # "sd1", "sd2", "sdxl" or None when nothing tells
    ignored_keys: list[str] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        return sum(layer.nbytes for layer in self.layers)


# ---------------------------------------------------------------------------------------------- parsing


def parse_network(state_dict: Mapping[str, Tensor], metadata: Mapping[str, str], label: str) -> LoraNetwork:
    """Group a LoRA state dict into layers; raise LoraFormatError for networks we cannot apply faithfully."""
    reject_unsupported(state_dict.keys(), label)
    parts: dict[tuple[str | None, str], dict[str, Tensor]] = {}
    ignored: list[str] = []
    for key, tensor in state_dict.items():
        split = split_key(key)
        if split is None:
            ignored.append(key)
            continue
        module, role = split
        parts.setdefault(target_of(module), {})[role] = tensor
    peft_alphas = peft_alpha_table(metadata)
    layers = []
    for (component, name), roles in parts.items():
        if "down" not in roles or "up" not in roles:
            ignored += [f"{component or ''}:{name}.{role}" for role in roles]
            continue
        alpha = float(roles["alpha"].item()) if "alpha" in roles else peft_alpha(peft_alphas, component, name)
        scale = float(roles["scale"].item()) if "scale" in roles else None
        layers.append(LoraLayer(component, name, roles["down"], roles["up"], roles.get("mid"), alpha, scale))
    if not layers:
        raise LoraFormatError(f"{label}: no LoRA layers found (expected lora_down/lora_up or lora_A/lora_B "
                              f"weights); is it a LoRA file?")
    shapes = {key: tuple(tensor.shape) for key, tensor in state_dict.items()}
    return LoraNetwork(label, layers, guess_family(shapes, metadata), ignored)


def reject_unsupported(keys: Iterable[str], label: str) -> None:
    for key in keys:
        for marker, kind in UNSUPPORTED_MARKERS:
            if marker in key:
                raise LoraFormatError(
                    f"{label}: {kind} networks ({marker.strip('.')}* weights, e.g. {key!r}) are not supported; only "
                    f"LoRA and LoCon (lora_down/lora_up, lora_A/lora_B) can be applied. Remove the tag or convert "
                    f"the file.")
        if _FULL_DIFF.search(key):
            raise LoraFormatError(f"{label}: full weight-difference networks ({key!r}) are not supported; only LoRA "
                                  f"and LoCon can be applied. Remove the tag or convert the file.")


def split_key(key: str) -> tuple[str, str] | None:
    """'lora_unet_x.lora_down.weight' → ('lora_unet_x', 'down'); None for keys that are not LoRA factors."""
    if key.startswith(_BUNDLED_EMBEDDING):
        return None
    for old, new in LEGACY_NAMES:
        key = key.replace(old, new)
    for pattern, roles in _FACTOR_PATTERNS:
        match = pattern.match(key)
        if match:
            role = match[2]
            return match[1], roles[role] if roles else role
    return None


def target_of(module: str) -> tuple[str | None, str]:
    """(component, flat name) for a kohya name or a dotted diffusers/peft path."""
    for prefix, component in KOHYA_PREFIXES:
        if module.startswith(prefix):
            return component, text_model_prefixed(component, module[len(prefix):])
    module = module.removeprefix("base_model.model.")
    for prefix, component in DOTTED_PREFIXES:
        if module.startswith(prefix):
            return component, text_model_prefixed(component, flat(module[len(prefix):]))
    return None, flat(module)


def flat(path: str) -> str:
    return path.replace(".", "_")


def text_model_prefixed(component: str, name: str) -> str:
    """Text-encoder names always start with 'text_model_' (transformers 5 flattened CLIPTextModel drops it)."""
    if component != "unet" and not name.startswith("text_model_"):
        return "text_model_" + name
    return name


def peft_alpha_table(metadata: Mapping[str, str]) -> dict[str, object]:
    raw = metadata.get(PEFT_METADATA_KEY)
    if not raw:
        return {}
    try:
        table = json.loads(raw)
    except ValueError:
        return {}
    return table if isinstance(table, dict) else {}


def peft_alpha(table: Mapping[str, object], component: str | None, name: str) -> float | None:
    """lora_alpha from diffusers' saved LoraConfig ('unet.lora_alpha', 'unet.alpha_pattern'); None = alpha = rank."""
    prefix = f"{component or 'unet'}."
    pattern = table.get(prefix + "alpha_pattern")
    if isinstance(pattern, dict):
        for suffix, value in pattern.items():
            if name.endswith(flat(suffix)):
                return float(value)
    value = table.get(prefix + "lora_alpha")
    return float(value) if isinstance(value, (int, float)) else None


# ---------------------------------------------------------------------------------------------- family


CROSS_ATTENTION_WIDTHS = {768: "sd1", 1024: "sd2", 2048: "sdxl"}
TEXT_WIDTHS = {768: "sd1", 1024: "sd2"}  # lora_te_ q_proj input width


def guess_family(shapes: Mapping[str, tuple[int, ...]], metadata: Mapping[str, str]) -> str | None:
    """'sd1' / 'sd2' / 'sdxl' from training metadata, SDXL-only key prefixes, or the real models' widths."""
    from_metadata = family_from_metadata(metadata)
    if from_metadata:
        return from_metadata
    if any(key.startswith(("lora_te1_", "lora_te2_", "text_encoder_2.")) for key in shapes):
        return "sdxl"
    for key, shape in shapes.items():
        down = (".lora_down." in key or ".lora_A." in key or ".lora.down." in key) and len(shape) >= 2
        if down and ("attn2_to_k" in key or "attn2.to_k" in key) and shape[1] in CROSS_ATTENTION_WIDTHS:
            return CROSS_ATTENTION_WIDTHS[shape[1]]
        if down and key.startswith("lora_te_") and "q_proj" in key and shape[1] in TEXT_WIDTHS:
            return TEXT_WIDTHS[shape[1]]
    return None


def family_from_metadata(metadata: Mapping[str, str]) -> str | None:
    architecture = metadata.get("modelspec.architecture", "")
    if architecture.startswith("stable-diffusion-xl"):
        return "sdxl"
    if architecture.startswith("stable-diffusion-v2"):
        return "sd2"
    if architecture.startswith("stable-diffusion-v1"):
        return "sd1"
    version = metadata.get("ss_base_model_version", "")
    if version.startswith("sdxl"):
        return "sdxl"
    if version.startswith(("sd_v2", "sd_2")):
        return "sd2"
    if version.startswith(("sd_v1", "sd_1")):
        return "sd1"
    if metadata.get("ss_v2") == "True":
        return "sd2"
    return None
