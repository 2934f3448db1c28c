"""A1111 samplers and schedule types as a declarative table, mapped onto diffusers schedulers.

A1111 names a sampler ("DPM++ 2M") and a schedule type ("Karras"); diffusers has one scheduler class whose
constructor flags pick both. `resolve_sampler` turns names (display names, aliases, legacy "DPM++ 2M Karras"
suffix forms) into table rows; `build_scheduler` makes a fresh diffusers scheduler per job (they hold step state).

Two families (engine-facts §6):
- k-diffusion samplers walk sigmas. k-diffusion's default sigmas are the model's sigmas at t = linspace(999, 0, n),
  which is diffusers' `timestep_spacing="linspace"` (SDXL's config says "leading": first sigma 11.0 instead of 14.6).
- timestep samplers (DDIM, PLMS, UniPC) use A1111's `range(0, 1000, 1000 // n) + 1` = "leading" + `steps_offset=1`.

diffusers silently drops constructor kwargs it does not know (`use_karras_sigmas` on Euler a), so every flag set
is checked against the class signature and combinations that would be ignored are rejected.
"""
from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

AUTOMATIC = "automatic"

# Model-owned scheduler config: the betas define the sigmas, prediction_type/zero-SNR the model's output.
# Everything else in a model's scheduler config (spacing, use_karras_sigmas, ...) is the sampler's choice.
MODEL_CONFIG_KEYS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
                     "prediction_type", "rescale_betas_zero_snr")


class UnknownSamplerError(ValueError):
    """A sampler or schedule name that is unknown or unsupported; the message lists what is valid."""


@dataclass(frozen=True)
class ScheduleSpec:
    id: str
    label: str
    aliases: tuple[str, ...] = ()
    default_rho: float | None = None
    need_inner_model: bool = False  # A1111 API field: the schedule needs the model's own sigma table
    flags: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))  # scheduler kwargs

    def names(self) -> tuple[str, ...]:
        return (self.id, self.label, *self.aliases)


@dataclass(frozen=True)
class SamplerSpec:
    name: str  # A1111 display name
    aliases: tuple[str, ...]
    scheduler_class: str  # diffusers class name
    flags: Mapping[str, Any]  # constructor kwargs
    default_schedule: str  # what "Automatic" resolves to; "" for timestep samplers
    schedules: tuple[str, ...]  # schedule ids this sampler supports faithfully
    k_diffusion: bool  # sigma-based (linspace spacing) vs timestep sampler ("leading")
    api_options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))  # A1111 "options" extras
    note: str = ""  # where the diffusers scheduler differs from A1111's sampler


def _flags(**kwargs: Any) -> Mapping[str, Any]:
    return MappingProxyType(kwargs)


def _k_flags(**kwargs: Any) -> Mapping[str, Any]:
    """k-diffusion sampler: sigmas at t = linspace(999, 0, n) like k-diffusion's get_sigmas."""
    return MappingProxyType({"timestep_spacing": "linspace", **kwargs})


def _timestep_flags(**kwargs: Any) -> Mapping[str, Any]:
    """Timestep sampler: A1111 range(0, 1000, 1000 // n) + 1 = "leading" + steps_offset 1."""
    return MappingProxyType({"timestep_spacing": "leading", "steps_offset": 1, **kwargs})


SCHEDULES: tuple[ScheduleSpec, ...] = (
    ScheduleSpec("automatic", "Automatic"),
    ScheduleSpec("uniform", "Uniform"),  # the sampler's linspace spacing, no extra flag
    ScheduleSpec("karras", "Karras", default_rho=7.0, flags=_flags(use_karras_sigmas=True)),
    ScheduleSpec("exponential", "Exponential", flags=_flags(use_exponential_sigmas=True)),
    # A1111: t = linspace(999, 0, n + 1)[:-1]; diffusers "trailing": 1000 - k·1000/n - 1 (within 0.05·k of it)
    ScheduleSpec("sgm_uniform", "SGM Uniform", ("SGMUniform",), need_inner_model=True,
                 flags=_flags(timestep_spacing="trailing")),
    # diffusers' beta sigmas use alpha = beta = 0.6, A1111's defaults
    ScheduleSpec("beta", "Beta", flags=_flags(use_beta_sigmas=True)),
)

_SIGMA_SCHEDULES = ("uniform", "karras", "exponential", "sgm_uniform", "beta")

SAMPLERS: tuple[SamplerSpec, ...] = (
    SamplerSpec("DPM++ 2M", ("k_dpmpp_2m",), "DPMSolverMultistepScheduler",
                _k_flags(algorithm_type="dpmsolver++", solver_order=2), "karras", _SIGMA_SCHEDULES, True),
    SamplerSpec("DPM++ SDE", ("k_dpmpp_sde",), "DPMSolverSDEScheduler", _k_flags(), "karras", _SIGMA_SCHEDULES, True,
                _flags(second_order=True, brownian_noise=True)),
    SamplerSpec("DPM++ 2M SDE", ("k_dpmpp_2m_sde",), "DPMSolverMultistepScheduler",
                _k_flags(algorithm_type="sde-dpmsolver++", solver_order=2), "exponential", _SIGMA_SCHEDULES, True,
                _flags(brownian_noise=True),
                note="noise from the job generator, not a Brownian tree"),
    SamplerSpec("DPM++ 2S a", ("k_dpmpp_2s_a",), "DPMSolverSinglestepScheduler",
                # no timestep_spacing parameter: its own spacing is linspace-like already
                _flags(algorithm_type="dpmsolver++", solver_order=2, lower_order_final=True), "karras",
                ("uniform", "karras", "exponential", "beta"), True, _flags(uses_ensd=True, second_order=True),
                note="nearest: single-step DPM-Solver++(2S), not ancestral"),
    SamplerSpec("DPM++ 3M SDE", ("k_dpmpp_3m_sde",), "DPMSolverMultistepScheduler",
                _k_flags(algorithm_type="sde-dpmsolver++", solver_order=3), "exponential", _SIGMA_SCHEDULES, True,
                _flags(discard_next_to_last_sigma=True, brownian_noise=True),
                note="keeps the penultimate sigma A1111 drops"),
    SamplerSpec("Euler a", ("k_euler_a", "k_euler_ancestral"), "EulerAncestralDiscreteScheduler", _k_flags(),
                "uniform", ("uniform", "sgm_uniform"), True, _flags(uses_ensd=True)),
    SamplerSpec("Euler", ("k_euler",), "EulerDiscreteScheduler", _k_flags(), "uniform", _SIGMA_SCHEDULES, True),
    SamplerSpec("LMS", ("k_lms",), "LMSDiscreteScheduler", _k_flags(), "uniform", _SIGMA_SCHEDULES, True),
    SamplerSpec("Heun", ("k_heun",), "HeunDiscreteScheduler", _k_flags(), "uniform", _SIGMA_SCHEDULES, True,
                _flags(second_order=True)),
    SamplerSpec("DPM2", ("k_dpm_2",), "KDPM2DiscreteScheduler", _k_flags(), "karras", _SIGMA_SCHEDULES, True,
                _flags(discard_next_to_last_sigma=True, second_order=True),
                note="keeps the penultimate sigma A1111 drops"),
    SamplerSpec("DPM2 a", ("k_dpm_2_a",), "KDPM2AncestralDiscreteScheduler", _k_flags(), "karras",
                _SIGMA_SCHEDULES, True, _flags(discard_next_to_last_sigma=True, uses_ensd=True, second_order=True),
                note="keeps the penultimate sigma A1111 drops"),
    SamplerSpec("LCM", ("k_lcm",), "LCMScheduler", _timestep_flags(), "", (), False,
                note="diffusers' LCM timestep schedule (original_inference_steps 50), not k-diffusion sigmas"),
    SamplerSpec("DDIM", ("ddim",), "DDIMScheduler", _timestep_flags(set_alpha_to_one=False, clip_sample=False), "",
                (), False),
    SamplerSpec("PLMS", ("plms",), "PNDMScheduler", _timestep_flags(skip_prk_steps=True, set_alpha_to_one=False), "",
                (), False),
    SamplerSpec("UniPC", ("unipc",), "UniPCMultistepScheduler", _timestep_flags(), "", (), False),
)

# A1111 samplers without a diffusers equivalent → the nearest one we have (named in the error message).
UNAVAILABLE_SAMPLERS: Mapping[str, str] = MappingProxyType({
    "dpm fast": "DPM++ 2M", "k_dpm_fast": "DPM++ 2M",
    "dpm adaptive": "DPM++ 2M", "k_dpm_ad": "DPM++ 2M",
    "restart": "DPM++ 2M",
    "ddim cfg++": "DDIM", "ddim_cfgpp": "DDIM",
    "dpm++ 2m sde heun": "DPM++ 2M SDE", "k_dpmpp_2m_sde_heun": "DPM++ 2M SDE",
})


def _valid_sampler_names() -> str:
    return ", ".join(spec.name for spec in SAMPLERS)


def _valid_schedule_names() -> str:
    return ", ".join(f"{spec.label} ({spec.id})" for spec in SCHEDULES)


def find_sampler(name: str) -> SamplerSpec | None:
    """Exact display name or alias, case-insensitive; None when unknown."""
    wanted = name.strip().casefold()
    for spec in SAMPLERS:
        if wanted in (spec.name.casefold(), *(alias.casefold() for alias in spec.aliases)):
            return spec
    return None


def find_schedule(name: str) -> ScheduleSpec | None:
    """Schedule by id, label or alias, case-insensitive; None when unknown."""
    wanted = name.strip().casefold()
    for spec in SCHEDULES:
        if wanted in (n.casefold() for n in spec.names()):
            return spec
    return None


def schedule_by_id(schedule_id: str) -> ScheduleSpec:
    return next(spec for spec in SCHEDULES if spec.id == schedule_id)


def _split_legacy_name(name: str) -> tuple[SamplerSpec, ScheduleSpec | None]:
    """'DPM++ 2M Karras' → (DPM++ 2M, Karras): A1111 strips a trailing ' <schedule id/label/alias>'."""
    spec = find_sampler(name)
    if spec is not None:
        return spec, None
    folded = name.strip().casefold()
    for schedule in SCHEDULES:
        for form in schedule.names():
            suffix = " " + form.casefold()
            if folded.endswith(suffix):
                spec = find_sampler(name.strip()[: -len(suffix)])
                if spec is not None:
                    return spec, schedule
    nearest = UNAVAILABLE_SAMPLERS.get(folded)
    if nearest is not None:
        raise UnknownSamplerError(f"sampler {name!r} has no diffusers equivalent; the nearest is {nearest!r}. "
                                  f"Valid samplers: {_valid_sampler_names()}")
    raise UnknownSamplerError(f"unknown sampler {name!r}; valid samplers: {_valid_sampler_names()}")


def _is_automatic(scheduler: str | None) -> bool:
    return scheduler is None or scheduler.strip().casefold() in ("", AUTOMATIC)


def _check_supported(sampler: SamplerSpec, schedule: ScheduleSpec) -> None:
    if sampler.k_diffusion and schedule.id in sampler.schedules:
        return
    if not sampler.k_diffusion and schedule.id == AUTOMATIC:
        return
    if not sampler.k_diffusion:
        raise UnknownSamplerError(f"{sampler.name} uses its own timestep schedule; schedule type must be "
                                  f"Automatic, got {schedule.label!r}")
    supported = ", ".join(schedule_by_id(s).label for s in sampler.schedules)
    raise UnknownSamplerError(f"{sampler.name} does not support the {schedule.label} schedule in diffusers; "
                              f"supported: Automatic, {supported}")


def resolve_sampler(sampler_name: str | None, scheduler: str | None = None) -> tuple[SamplerSpec, ScheduleSpec]:
    """Sampler row + resolved schedule row (never Automatic for k-diffusion samplers).

    Precedence as in A1111: an explicit `scheduler` (not None/""/"Automatic") wins over a legacy name suffix,
    which wins over the sampler's default. `sampler_name` None or "" → the UI default, the first sampler.
    """
    if sampler_name is None or not sampler_name.strip():
        sampler, suffix_schedule = SAMPLERS[0], None
    else:
        sampler, suffix_schedule = _split_legacy_name(sampler_name)
    if not _is_automatic(scheduler):
        schedule = find_schedule(scheduler)
        if schedule is None:
            raise UnknownSamplerError(f"unknown schedule type {scheduler!r}; valid: {_valid_schedule_names()}")
    else:
        schedule = suffix_schedule or schedule_by_id(AUTOMATIC)
    if not sampler.k_diffusion:
        # Timestep samplers have no sigma schedule; A1111 ignores the field for them, and so do we.
        return sampler, schedule_by_id(AUTOMATIC)
    if schedule.id == AUTOMATIC:
        schedule = schedule_by_id(sampler.default_schedule)
    _check_supported(sampler, schedule)
    return sampler, schedule


def _scheduler_kwargs(sampler: SamplerSpec, schedule: ScheduleSpec,
                      model_scheduler_config: Mapping[str, Any]) -> dict[str, Any]:
    """Model betas/prediction < sampler flags < schedule flags."""
    kwargs = {key: model_scheduler_config[key] for key in MODEL_CONFIG_KEYS if key in model_scheduler_config}
    if not kwargs.get("rescale_betas_zero_snr"):
        kwargs.pop("rescale_betas_zero_snr", None)  # only pass it where it matters (not every class has it)
    kwargs.update(sampler.flags)
    kwargs.update(schedule.flags)
    return kwargs


def _scheduler_class(class_name: str) -> type:
    return getattr(importlib.import_module("diffusers"), class_name)


def build_scheduler(sampler: SamplerSpec, schedule: ScheduleSpec, model_scheduler_config: Mapping[str, Any], *,
                    seeds: list[int] | None = None) -> Any:
    """A NEW diffusers scheduler for one job. `seeds` (one per image of the batch) seed the Brownian noise of the
    SDE samplers, one tree per image as A1111 does, so an image is the same alone or in a batch."""
    if schedule.id == AUTOMATIC and sampler.k_diffusion:
        schedule = schedule_by_id(sampler.default_schedule)
    _check_supported(sampler, schedule)
    kwargs = _scheduler_kwargs(sampler, schedule, model_scheduler_config)
    scheduler_class = _scheduler_class(sampler.scheduler_class)
    accepted = set(inspect.signature(scheduler_class.__init__).parameters)
    if "noise_sampler_seed" in accepted:
        kwargs["noise_sampler_seed"] = list(seeds) if seeds else None
    if "steps_offset" in accepted:
        # Pipelines rewrite any other value to 1 with a deprecation warning; it only matters for "leading".
        kwargs.setdefault("steps_offset", 1)
    ignored = sorted(set(kwargs) - accepted)
    if ignored:
        # diffusers would drop these silently (e.g. zero-SNR on a class without it) → a wrong result
        raise UnknownSamplerError(f"{sampler.name} ({sampler.scheduler_class}) cannot take {ignored} "
                                  f"(schedule {schedule.label}, model config)")
    return scheduler_class(**kwargs)


def infotext_schedule_label(sampler: SamplerSpec, schedule: ScheduleSpec) -> str | None:
    """'Schedule type:' value: the resolved label; None for timestep samplers (they have no schedule type)."""
    if not sampler.k_diffusion:
        return None
    if schedule.id == AUTOMATIC:
        schedule = schedule_by_id(sampler.default_schedule)
    return schedule.label


def sampler_list_for_api() -> list[dict]:
    """GET /sdapi/v1/samplers: [{"name", "aliases", "options"}]; options as A1111 (scheduler unless uniform)."""
    result = []
    for spec in SAMPLERS:
        options: dict[str, Any] = {}
        if spec.default_schedule and spec.default_schedule != "uniform":
            options["scheduler"] = spec.default_schedule
        options.update(spec.api_options)
        result.append({"name": spec.name, "aliases": list(spec.aliases), "options": options})
    return result


def schedule_list_for_api() -> list[dict]:
    """GET /sdapi/v1/schedulers: [{"name", "label", "aliases", "default_rho", "need_inner_model"}]."""
    return [{"name": spec.id, "label": spec.label, "aliases": list(spec.aliases) or None,
             "default_rho": spec.default_rho if spec.default_rho is not None else -1.0,
             "need_inner_model": spec.need_inner_model} for spec in SCHEDULES]
