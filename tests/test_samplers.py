"""Sampler table: name resolution, faithful diffusers flags, k-diffusion sigma parity, dummy denoising loops."""
from __future__ import annotations

import inspect
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import diffusers  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from modules.engine import samplers  # noqa: E402
from modules.engine.samplers import (  # noqa: E402
    SAMPLERS, SCHEDULES, UnknownSamplerError, build_scheduler, infotext_schedule_label, resolve_sampler,
    sampler_list_for_api, schedule_list_for_api)

# engine-facts §2: SD1.5 ships a PNDM config, SDXL an Euler one with "leading" spacing.
SD15_CONFIG = {"_class_name": "PNDMScheduler", "num_train_timesteps": 1000, "beta_start": 0.00085,
               "beta_end": 0.012, "beta_schedule": "scaled_linear", "steps_offset": 1, "clip_sample": False,
               "set_alpha_to_one": False, "skip_prk_steps": True, "prediction_type": "epsilon",
               "trained_betas": None}
SDXL_CONFIG = {"_class_name": "EulerDiscreteScheduler", "num_train_timesteps": 1000, "beta_start": 0.00085,
               "beta_end": 0.012, "beta_schedule": "scaled_linear", "steps_offset": 1, "clip_sample": False,
               "set_alpha_to_one": False, "prediction_type": "epsilon", "timestep_spacing": "leading",
               "interpolation_type": "linear", "use_karras_sigmas": False, "trained_betas": None}
CONFIGS = {"sd15": SD15_CONFIG, "sdxl": SDXL_CONFIG}
SAMPLER_NAMES = [spec.name for spec in SAMPLERS]


def _reference_sigma_table() -> torch.Tensor:
    """k-diffusion DiscreteSchedule.sigmas for SD: sqrt((1 - ᾱ) / ᾱ), ascending in t."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    return ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5


def _k_diffusion_sigmas(n: int) -> torch.Tensor:
    """k-diffusion get_sigmas(n): t_to_sigma(linspace(999, 0, n)) (log-sigma interpolation) + [0]."""
    log_sigmas = _reference_sigma_table().log()
    t = torch.linspace(999, 0, n, dtype=torch.float64)
    low, high = t.floor().long(), t.ceil().long()
    weight = t.frac()
    sigmas = ((1 - weight) * log_sigmas[low] + weight * log_sigmas[high]).exp()
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def _karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """k-diffusion get_sigmas_karras: (σmax^(1/ρ) + ramp·(σmin^(1/ρ) − σmax^(1/ρ)))^ρ + [0]."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    min_inv_rho, max_inv_rho = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)])


TARGET = torch.linspace(-0.8, 0.8, 4 * 8 * 8).reshape(1, 4, 8, 8)  # the clean latent the fake model knows


def _oracle_epsilon(model_input: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
    """A perfect ε-model for x0 = TARGET: model_input is the VP sample √ᾱ·x0 + √(1−ᾱ)·ε at `timestep`."""
    alphas_cumprod = 1.0 / (1.0 + _reference_sigma_table() ** 2)  # σ² = (1 − ᾱ)/ᾱ
    alpha = alphas_cumprod[int(round(float(timestep)))].float()
    return (model_input - alpha.sqrt() * TARGET) / (1 - alpha).sqrt()


def _denoise(scheduler, steps: int, seed: int) -> torch.Tensor:
    """A full sampling loop with a fake deterministic model that predicts the noise towards TARGET."""
    generator = torch.Generator("cpu").manual_seed(seed)
    scheduler.set_timesteps(steps)
    # like diffusers pipelines (prepare_extra_step_kwargs): only ancestral/SDE steps take a generator
    takes_generator = "generator" in inspect.signature(scheduler.step).parameters
    step_kwargs = {"generator": generator} if takes_generator else {}
    latents = torch.randn((1, 4, 8, 8), generator=generator) * scheduler.init_noise_sigma
    for timestep in scheduler.timesteps:
        model_input = scheduler.scale_model_input(latents, timestep)
        latents = scheduler.step(_oracle_epsilon(model_input, timestep), timestep, latents,
                                 **step_kwargs).prev_sample
    return latents


@pytest.mark.parametrize("family", CONFIGS)
@pytest.mark.parametrize("name", SAMPLER_NAMES)
def test_every_sampler_runs_a_deterministic_loop(name: str, family: str) -> None:
    sampler, schedule = resolve_sampler(name)
    first = _denoise(build_scheduler(sampler, schedule, CONFIGS[family], seeds=[7]), steps=20, seed=3)
    second = _denoise(build_scheduler(sampler, schedule, CONFIGS[family], seeds=[7]), steps=20, seed=3)
    assert torch.isfinite(first).all()
    assert torch.equal(first, second)
    assert (first - TARGET).abs().max() < 0.2  # a perfect model's sample lands on its x0 (wrong sigmas don't)


@pytest.mark.parametrize("name", [spec.name for spec in SAMPLERS if spec.k_diffusion])
def test_every_declared_schedule_builds_and_changes_the_sigmas(name: str) -> None:
    sampler, _ = resolve_sampler(name)
    sigma_sets = {}
    for schedule_id in sampler.schedules:
        _, schedule = resolve_sampler(name, schedule_id)
        scheduler = build_scheduler(sampler, schedule, SDXL_CONFIG, seeds=[1])
        for flag, value in {**sampler.flags, **schedule.flags}.items():
            assert scheduler.config[flag] == value, (schedule_id, flag)
        assert torch.isfinite(_denoise(scheduler, steps=6, seed=0)).all()
        scheduler.set_timesteps(6)
        sigma_sets[schedule_id] = tuple(scheduler.timesteps.tolist())
    assert len(set(sigma_sets.values())) == len(sigma_sets)  # each schedule really does something


def test_declared_flags_are_constructor_parameters() -> None:
    """diffusers drops unknown kwargs silently, so the table must only use real parameters."""
    by_id = {spec.id: spec for spec in SCHEDULES}
    for sampler in SAMPLERS:
        accepted = set(inspect.signature(getattr(diffusers, sampler.scheduler_class).__init__).parameters)
        assert set(sampler.flags) <= accepted, sampler.name
        for schedule_id in sampler.schedules:
            assert set(by_id[schedule_id].flags) <= accepted, (sampler.name, schedule_id)


@pytest.mark.parametrize("steps", [10, 20, 37])
@pytest.mark.parametrize("family", CONFIGS)
def test_euler_uniform_matches_k_diffusion_sigmas(steps: int, family: str) -> None:
    scheduler = build_scheduler(*resolve_sampler("Euler"), CONFIGS[family])
    scheduler.set_timesteps(steps)
    expected = _k_diffusion_sigmas(steps)
    assert scheduler.sigmas.shape == expected.shape
    assert torch.allclose(scheduler.sigmas.double(), expected, atol=1e-4)
    assert abs(float(scheduler.sigmas[0]) - 14.6146) < 1e-3  # not SDXL "leading"'s 11.0


@pytest.mark.parametrize("name", ["Euler", "DPM++ SDE", "Heun", "LMS"])
def test_karras_sigmas_match_k_diffusion(name: str) -> None:
    table = _reference_sigma_table()
    expected = _karras_sigmas(20, float(table[0]), float(table[-1]))
    sampler, schedule = resolve_sampler(name, "karras")
    scheduler = build_scheduler(sampler, schedule, SD15_CONFIG, seeds=[0])
    scheduler.set_timesteps(20)
    sigmas = scheduler.sigmas.double()
    if name == "Heun":  # second-order: every inner sigma is repeated
        sigmas = torch.cat([sigmas[:1], sigmas[1:-1:2], sigmas[-1:]])
    if name == "DPM++ SDE":
        sigmas = torch.cat([sigmas[:1], sigmas[1:-1:2], sigmas[-1:]])
    assert torch.allclose(sigmas, expected, atol=1e-4, rtol=1e-5)


def test_dpmpp_2m_automatic_is_karras_and_sde_seed_is_passed() -> None:
    sampler, schedule = resolve_sampler("DPM++ 2M")
    assert schedule.id == "karras"
    assert build_scheduler(sampler, schedule, SD15_CONFIG).config.use_karras_sigmas
    sde = build_scheduler(*resolve_sampler("DPM++ SDE"), SD15_CONFIG, seeds=[1234])
    assert sde.config.noise_sampler_seed == [1234]


def test_timestep_samplers_keep_a1111_spacing() -> None:
    ddim = build_scheduler(*resolve_sampler("DDIM"), SDXL_CONFIG)
    ddim.set_timesteps(20)
    assert ddim.timesteps.tolist() == [t + 1 for t in range(0, 1000, 50)][::-1]  # range(0,1000,1000//n)+1
    assert ddim.config.set_alpha_to_one is False and ddim.config.clip_sample is False
    assert build_scheduler(*resolve_sampler("PLMS"), SD15_CONFIG).config.skip_prk_steps is True


def test_model_config_keeps_prediction_type_but_not_its_schedule_flags() -> None:
    config = {**SDXL_CONFIG, "prediction_type": "v_prediction", "use_karras_sigmas": True}
    scheduler = build_scheduler(*resolve_sampler("Euler"), config)
    assert scheduler.config.prediction_type == "v_prediction"
    assert scheduler.config.use_karras_sigmas is False  # Euler's Automatic = Uniform, whatever the model says
    assert scheduler.config.timestep_spacing == "linspace"


def test_zero_snr_model_is_kept_or_rejected_loudly() -> None:
    config = {**SD15_CONFIG, "prediction_type": "v_prediction", "rescale_betas_zero_snr": True}
    assert build_scheduler(*resolve_sampler("Euler"), config).config.rescale_betas_zero_snr is True
    with pytest.raises(UnknownSamplerError, match="rescale_betas_zero_snr"):
        build_scheduler(*resolve_sampler("LMS"), config)  # LMS would silently drop zero-SNR


def test_build_scheduler_returns_a_new_object_each_call() -> None:
    sampler, schedule = resolve_sampler("DPM++ 2M")
    first, second = build_scheduler(sampler, schedule, SD15_CONFIG), build_scheduler(sampler, schedule, SD15_CONFIG)
    assert first is not second
    first.set_timesteps(5)
    assert second.num_inference_steps is None


@pytest.mark.parametrize(("name", "scheduler", "expected_sampler", "expected_schedule"), [
    (None, None, "DPM++ 2M", "karras"),
    ("", "Automatic", "DPM++ 2M", "karras"),
    ("dpm++ 2m", None, "DPM++ 2M", "karras"),
    ("k_euler_a", None, "Euler a", "uniform"),
    ("K_EULER_ANCESTRAL", "", "Euler a", "uniform"),
    ("DPM++ 2M Karras", None, "DPM++ 2M", "karras"),
    ("DPM++ 2M karras", "Automatic", "DPM++ 2M", "karras"),
    ("DPM++ SDE Karras", None, "DPM++ SDE", "karras"),
    ("DPM++ 2M SDE Exponential", None, "DPM++ 2M SDE", "exponential"),
    ("DPM++ 2M SDE Karras", None, "DPM++ 2M SDE", "karras"),
    ("DPM++ 2M SGMUniform", None, "DPM++ 2M", "sgm_uniform"),
    ("DPM++ 2M SGM Uniform", None, "DPM++ 2M", "sgm_uniform"),
    ("DPM++ 2M Karras", "exponential", "DPM++ 2M", "exponential"),  # explicit scheduler wins
    ("Euler", "Karras", "Euler", "karras"),
    ("Euler", "karras", "Euler", "karras"),
    ("Euler", "SGMUniform", "Euler", "sgm_uniform"),
    ("Euler", "sgm_uniform", "Euler", "sgm_uniform"),
    ("Euler", "SGM Uniform", "Euler", "sgm_uniform"),
    ("DDIM", None, "DDIM", "automatic"),
    ("unipc", "Automatic", "UniPC", "automatic"),
])
def test_names_resolve(name, scheduler, expected_sampler, expected_schedule) -> None:
    sampler, schedule = resolve_sampler(name, scheduler)
    assert (sampler.name, schedule.id) == (expected_sampler, expected_schedule)


@pytest.mark.parametrize(("name", "scheduler", "message"), [
    ("Euler a Karras", None, "supported: Automatic, Uniform, SGM Uniform"),
    ("Euler a", "exponential", "supported: Automatic, Uniform"),
    ("DPM++ 2S a", "sgm_uniform", "supported"),
    ("Nonexistent", None, "valid samplers: DPM\\+\\+ 2M, DPM\\+\\+ SDE"),
    ("Restart", None, "nearest is 'DPM\\+\\+ 2M'"),
    ("DPM++ 2M SDE Heun", None, "nearest is 'DPM\\+\\+ 2M SDE'"),
    ("Euler", "polyexponential", "valid: Automatic \\(automatic\\), Uniform"),
])
def test_unknown_or_unsupported_names_raise_listing_valid_ones(name, scheduler, message) -> None:
    with pytest.raises(UnknownSamplerError, match=message):
        resolve_sampler(name, scheduler)


def test_every_schedule_id_label_and_alias_is_accepted() -> None:
    for spec in SCHEDULES:
        for form in spec.names():
            for variant in (form, form.lower(), form.upper()):
                assert samplers.find_schedule(variant) is spec


def test_infotext_schedule_label() -> None:
    assert infotext_schedule_label(*resolve_sampler("DPM++ 2M")) == "Karras"
    assert infotext_schedule_label(*resolve_sampler("Euler")) == "Uniform"
    assert infotext_schedule_label(*resolve_sampler("DPM++ 2M SDE")) == "Exponential"
    assert infotext_schedule_label(*resolve_sampler("DPM++ 2M", "sgm_uniform")) == "SGM Uniform"
    assert infotext_schedule_label(*resolve_sampler("DDIM")) is None


def test_api_lists() -> None:
    listed = sampler_list_for_api()
    assert listed[0] == {"name": "DPM++ 2M", "aliases": ["k_dpmpp_2m"], "options": {"scheduler": "karras"}}
    assert [entry["name"] for entry in listed] == SAMPLER_NAMES
    assert len(set(SAMPLER_NAMES)) == len(SAMPLER_NAMES)
    schedules = {entry["name"]: entry for entry in schedule_list_for_api()}
    assert schedules["karras"] == {"name": "karras", "label": "Karras", "aliases": None, "default_rho": 7.0,
                                   "need_inner_model": False}
    assert schedules["sgm_uniform"]["aliases"] == ["SGMUniform"]
    assert list(schedules)[0] == "automatic"


def test_timestep_samplers_ignore_a_schedule_type_as_a1111_does() -> None:
    sampler, schedule = resolve_sampler("DDIM", "karras")
    assert sampler.name == "DDIM" and schedule.id == "automatic"
