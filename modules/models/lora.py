"""LoRAs applied to the resident model for one job and removed after it (the model manager owns the weights).

For every target layer of the loaded UNet / text encoders (A1111 `<lora:name:te:unet>`):

    W ← W + Σ_i m_i · (α_i / r_i) · up_i @ down_i          m_i = the tag's te or unet weight, r_i = rank

accumulated in float32 per layer; the original tensor is kept (CPU: swapped out, accelerators: copied to RAM) and
put back after the job, so "on, off, on" gives bit-identical images; weight 0 is exactly "no tag" (skipped).
Networks are mapped by name onto whichever checkpoint is resident when the job runs: UNet layers by their diffusers
names and by their LDM names (kohya SDXL files use `input_blocks_4_1_…`), text-encoder layers by their Hugging Face
names. Tags come from the positive prompt only (A1111); unknown names are skipped with a warning, as in A1111.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from modules.engine.prompt_parser import ExtraNetworkTag, extract_extra_networks
from modules.engine.request import GenerationRequest
from modules.models.ldm_export import unet_key_to_ldm
from modules.models.lora_files import LoraFile, LoraRegistry
from modules.models.lora_format import LoraFormatError, LoraLayer, LoraNetwork, flat, text_model_prefixed

if TYPE_CHECKING:
    from modules.engine.model import EngineModel
    from modules.models.manager import ModelManager

log = logging.getLogger(__name__)

LORA_TAG_KINDS = ("lora", "lyco")  # <lyco:…> is A1111's alias for LyCORIS-era prompts
MAX_LORA_TAGS = 20  # security notes §5
TEXT_COMPONENTS = ("text_encoder", "text_encoder_2")
WEIGHT_LAYERS = (nn.Linear, nn.Conv2d)
FAMILY_LABELS = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL"}
INFOTEXT_KEY = "Lora hashes"
TI_INFOTEXT_KEY = "TI hashes"


class LoraTagError(ValueError):
    """A `<lora:…>` tag that cannot be read (weight not a number, too many tags)."""


# ---------------------------------------------------------------------------------------------- tags


@dataclass(frozen=True)
class LoraTag:
    """`<lora:name:te:unet>`: unet defaults to te, te to 1 (A1111); `te=`/`unet=` named forms too."""

    name: str
    te: float = 1.0
    unet: float = 1.0

    @property
    def is_off(self) -> bool:
        return self.te == 0 and self.unet == 0

    def multiplier(self, component: str) -> float:
        return self.unet if component == "unet" else self.te


def lora_tags(prompt: str, default_weight: float = 1.0) -> list[LoraTag]:
    """The LoRA tags of a positive prompt, in order (the same LoRA twice adds up, as in A1111).

    `default_weight`: a tag without a weight (A1111 setting extra_networks_default_multiplier)."""
    _, tags = extract_extra_networks(prompt)
    found = [tag_values(tag, default_weight) for tag in tags if tag.kind in LORA_TAG_KINDS]
    if len(found) > MAX_LORA_TAGS:
        raise LoraTagError(f"at most {MAX_LORA_TAGS} <lora:…> tags per prompt, got {len(found)}")
    return found


def tag_values(tag: ExtraNetworkTag, default_weight: float = 1.0) -> LoraTag:
    te = _weight(tag, tag.named.get("te", tag.args[0] if tag.args else str(default_weight)))
    unet_text = tag.named.get("unet", tag.args[1] if len(tag.args) > 1 else None)
    return LoraTag(tag.name.strip(), te, te if unet_text is None else _weight(tag, unet_text))


def _weight(tag: ExtraNetworkTag, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise LoraTagError(f"<{tag.kind}:{tag.name}:…>: weight {text!r} is not a number") from None
    if value != value or abs(value) == float("inf"):
        raise LoraTagError(f"<{tag.kind}:{tag.name}:…>: weight must be finite, got {text!r}")
    return value


# ---------------------------------------------------------------------------------------------- model layers


def target_modules(model: EngineModel) -> dict[str, dict[str, nn.Module]]:
    """component → flat layer name → Linear/Conv2d of the resident model."""
    parts = model.components
    index = {"unet": unet_targets(parts.unet)}
    for component in TEXT_COMPONENTS:
        encoder = getattr(parts, component, None)
        if encoder is not None:
            index[component] = {text_model_prefixed(component, flat(name)): module
                                for name, module in encoder.named_modules() if isinstance(module, WEIGHT_LAYERS)}
    return index


def unet_targets(unet: nn.Module) -> dict[str, nn.Module]:
    """Diffusers names ('down_blocks_1_attentions_0_…') and LDM names ('input_blocks_4_1_…') of each layer."""
    config = unet.config
    up_has_attention = [block.startswith("CrossAttn") for block in config.up_block_types]
    targets: dict[str, nn.Module] = {}
    for name, module in unet.named_modules():
        if not isinstance(module, WEIGHT_LAYERS):
            continue
        targets[flat(name)] = module
        if isinstance(config.layers_per_block, int):
            try:
                ldm = unet_key_to_ldm(f"{name}.weight", config.layers_per_block, up_has_attention)
            except ValueError:
                continue
            targets.setdefault(flat(ldm.removesuffix(".weight")), module)
    return targets


def find_target(index: dict[str, dict[str, nn.Module]], layer: LoraLayer) -> tuple[str, nn.Module] | None:
    """(component, module) for a layer; bare peft names (no component) are tried on the UNet first."""
    if layer.component is not None:
        module = index.get(layer.component, {}).get(layer.name)
        return (layer.component, module) if module is not None else None
    for component in ("unet", *TEXT_COMPONENTS):
        name = layer.name if component == "unet" else text_model_prefixed(component, layer.name)
        module = index.get(component, {}).get(name)
        if module is not None:
            return component, module
    return None


def fits(layer: LoraLayer, weight: Tensor) -> bool:
    """ΔW is [out, in·k·k] before reshaping; it must have as many rows and columns as the weight."""
    columns = layer.down[0].numel() if layer.mid is None else layer.down.shape[1] * layer.mid[0, 0].numel()
    return layer.up.shape[0] == weight.shape[0] and columns == weight[0].numel()


# ---------------------------------------------------------------------------------------------- patching


class WeightPatch:
    """Weights changed for one job; restore() brings back the originals bit for bit.

    CPU: the patched tensor is built beside the original and swapped in; restoring swaps the original back, so
    nothing is copied twice and the original storage (possibly memory-mapped) is never written. Accelerators:
    patched in place (compiled modules stay valid), the original copied to CPU RAM first, not to device memory.
    """

    def __init__(self) -> None:
        self._swapped: list[tuple[Tensor, Tensor]] = []  # (parameter, its original data)
        self._copied: list[tuple[Tensor, Tensor]] = []  # (parameter, CPU copy of its original values)
        self.touched_components: set[str] = set()

    def apply(self, weight: Tensor, contributions: list[tuple[LoraLayer, float]]) -> None:
        if weight.device.type == "cpu":
            self._swapped.append((weight, weight.data))
            weight.data = patched(weight.data, contributions)
        else:
            self._copied.append((weight, weight.detach().to("cpu", copy=True)))
            weight.data.copy_(patched(weight.data, contributions))

    def restore(self) -> None:
        while self._swapped:
            weight, original = self._swapped.pop()
            weight.data = original
        while self._copied:
            weight, original = self._copied.pop()
            weight.data.copy_(original)

    def __len__(self) -> int:
        return len(self._swapped) + len(self._copied)


def patched(original: Tensor, contributions: list[tuple[LoraLayer, float]]) -> Tensor:
    """original + Σ m · ΔW as a new tensor of the original's shape and dtype, accumulated in float32."""
    total = original.detach().reshape(original.shape[0], -1).to(torch.float32, copy=True)
    for layer, multiplier in contributions:
        layer.add_to(total, multiplier)
    return total.reshape(original.shape).to(original.dtype)


@dataclass
class LoraUse:
    """One tag resolved to its file and parsed network."""

    tag: LoraTag
    entry: LoraFile
    network: LoraNetwork


def check_family(use: LoraUse, kind: str, model_name: str) -> None:
    family = use.network.family or use.entry.family
    if family and family != kind:
        checkpoint = f"the loaded checkpoint '{model_name}'" if model_name else "the loaded checkpoint"
        raise LoraFormatError(
            f"LoRA '{use.tag.name}' ({use.entry.relative_name}) is for {FAMILY_LABELS.get(family, family)}, but "
            f"{checkpoint} is {FAMILY_LABELS.get(kind, kind)}; use a LoRA trained for this model family or switch "
            f"the checkpoint")


def plan_deltas(model: EngineModel, uses: list[LoraUse], warnings: list[str]) \
        -> list[tuple[str, nn.Module, list[tuple[LoraLayer, float]]]]:
    """Every layer to change with its contributions; raises before any weight is touched."""
    index = target_modules(model)
    plan: dict[int, tuple[str, nn.Module, list[tuple[LoraLayer, float]]]] = {}
    for use in uses:
        check_family(use, model.kind, model.model_name)
        matched = 0
        for layer in use.network.layers:
            found = find_target(index, layer)
            if found is None:
                continue
            matched += 1
            component, module = found
            multiplier = use.tag.multiplier(component)
            if multiplier == 0:
                continue
            if not fits(layer, module.weight):
                raise LoraFormatError(
                    f"LoRA '{use.tag.name}' ({use.entry.relative_name}): layer {layer.name} has shape "
                    f"{tuple(layer.up.shape[:1]) + tuple(layer.down.shape[1:])}, the loaded model's is "
                    f"{tuple(module.weight.shape)}; the LoRA was trained for another model")
            plan.setdefault(id(module), (component, module, []))[2].append((layer, multiplier))
        total = len(use.network.layers)
        if matched == 0:
            raise LoraFormatError(
                f"LoRA '{use.tag.name}' ({use.entry.relative_name}): none of its {total} layers exist in the loaded "
                f"checkpoint '{model.model_name}' ({FAMILY_LABELS.get(model.kind, model.kind)}); is it for another "
                f"model family?")
        log.info("LoRA %s: %d of %d layers matched the loaded model", use.entry.relative_name, matched, total)
        if matched < total:
            warnings.append(f"LoRA '{use.tag.name}': {total - matched} of {total} layers have no counterpart in the "
                            f"loaded model and were skipped")
    return list(plan.values())


def apply_plan(plan: list[tuple[str, nn.Module, list[tuple[LoraLayer, float]]]], patch: WeightPatch) -> None:
    with torch.no_grad():
        for component, module, contributions in plan:
            patch.apply(module.weight, contributions)
            patch.touched_components.add(component)


# ---------------------------------------------------------------------------------------------- one job


@dataclass
class ActiveLoras:
    """What a job's LoRA tags did: infotext hashes (A1111 `Lora hashes`) and warnings for the result."""

    hashes: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    layers_changed: int = 0

    def infotext_value(self) -> str | None:
        return ", ".join(f"{name}: {short}" for name, short in self.hashes.items()) or None

    def annotate(self, request: GenerationRequest) -> GenerationRequest:
        """The request with `Lora hashes` in its infotext parameters (before `TI hashes`, A1111's order)."""
        value = self.infotext_value()
        if value is None:
            return request
        params = {key: item for key, item in request.extra_params.items() if key != INFOTEXT_KEY}
        keys = list(params)
        position = keys.index(TI_INFOTEXT_KEY) if TI_INFOTEXT_KEY in keys else len(keys)
        ordered = [*[(k, params[k]) for k in keys[:position]], (INFOTEXT_KEY, value),
                   *[(k, params[k]) for k in keys[position:]]]
        return request.replace(extra_params=dict(ordered))


def infotext_name(name: str) -> str:
    return name.replace(":", "").replace(",", "")  # A1111 drops these from names inside hash lists


def missing_message(registry: LoraRegistry, name: str) -> str:
    similar = registry.similar_names(name)
    hint = f"; did you mean {', '.join(similar)}?" if similar else f"; put it into {registry.roots[0]} and refresh"
    return f"LoRA '{name}' not found, skipped{hint}"


def resolve_tags(registry: LoraRegistry, tags: list[LoraTag], active: ActiveLoras) -> list[LoraUse]:
    uses = []
    for tag in tags:
        entry = registry.find(tag.name)
        if entry is None:
            active.warnings.append(missing_message(registry, tag.name))
            continue
        try:
            active.hashes[infotext_name(tag.name)] = entry.short_hash()
        except OSError as error:
            active.warnings.append(f"LoRA '{tag.name}': cannot hash {entry.relative_name} ({error})")
        if not tag.is_off:  # weight 0 ≡ no tag: nothing is read or changed
            uses.append(LoraUse(tag, entry, registry.network(entry)))
    return uses


@contextmanager
def applied_loras(registry: LoraRegistry, model: EngineModel, prompt: str, *,
                  default_weight: float = 1.0) -> Iterator[ActiveLoras]:
    """Apply the prompt's LoRAs to `model` for the duration of the block; always restored, even on errors."""
    active = ActiveLoras()
    patch = WeightPatch()
    try:
        uses = resolve_tags(registry, lora_tags(prompt, default_weight), active)
        if uses:
            apply_plan(plan_deltas(model, uses, active.warnings), patch)
            active.layers_changed = len(patch)
        if patch.touched_components & set(TEXT_COMPONENTS):
            model.prompt_encoder.clear_cache()  # cached prompt embeddings came from the unpatched encoders
        yield active
    finally:
        with torch.no_grad():
            patch.restore()
        if patch.touched_components & set(TEXT_COMPONENTS):
            model.prompt_encoder.clear_cache()


def check_prompt_loras(registry: LoraRegistry, prompt: str, model_kind: str | None) -> None:
    """Raise before queueing what would fail in the job: bad tags, unsupported files, another model family."""
    for tag in lora_tags(prompt):
        entry = registry.find(tag.name)
        if entry is None or tag.is_off:
            continue
        use = LoraUse(tag, entry, registry.network(entry))
        if model_kind is not None:
            check_family(use, model_kind, "")


def check_request_loras(registry: LoraRegistry, models: ModelManager, request: GenerationRequest) -> None:
    """check_prompt_loras against the checkpoint the request will run on, when that is the resident one."""
    current = models.current
    kind = None
    if current is not None and (request.checkpoint is None or
                                models.find_checkpoint(request.checkpoint).path == current.path):
        kind = models.model.kind
    check_prompt_loras(registry, request.prompt, kind)
