"""The default-model training code end to end, at toy size and for a few steps (seconds, not an hour)."""
import dataclasses
import json

import pytest
import torch
from diffusers import DDPMScheduler

from modules.models.architecture import family_config
from modules.models.loader import load_components, read_checkpoint
from modules.models.tokenizer import load_clip_tokenizer
from modules.training.dataset import build_dataset, caption_batch
from modules.training.denoiser import TimestepFocus, add_noise, epsilon_from_output, weighted_error
from modules.training.optimise import ExponentialMovingAverage
from modules.training.evaluate import build_pipeline, generate
from modules.training.decoder_samples import SamplingOptions, sample_latents
from modules.training.train_default_model import LaterStage, Recipe, continue_from, main, refit_decoder, train
from modules.training.vae import (
    build_vae, posterior_moments, refine_decoder, standardize_latents, standardized_moments,
    start_as_linear_autoencoder, train_vae,
)
from tests.fixtures.shapes_checkpoint import check_shapes_checkpoint

TINY = dataclasses.replace(
    Recipe(), scenes=48, vae_channels=(32, 32, 32, 32), vae_steps=2, vae_batch=4, decoder_steps=2, text_hidden=32,
    text_layers=1, text_warmup_steps=2, text_warmup_batch=8, unet_channels=(32, 64), unet_steps=3, unet_batch=4,
    sampled_latents=6, sampling_first_step=(15, 18), sample_fit_steps=2, sample_fit_per_batch=2,
    later_stages=(  # shapes-v2's stage layout, to exercise the later-stage machinery and its caches
        LaterStage("continued", steps=2, seed_offset=123, warmup=1),
        LaterStage("high-noise focus", steps=2, seed_offset=321, warmup=1, high_noise_share=0.5),
        LaterStage("high-noise focus, second", steps=2, seed_offset=654, warmup=1, high_noise_share=0.5),
    ),
)


def test_dataset_is_deterministic_and_drops_captions_for_guidance():
    tokenizer = load_clip_tokenizer()
    first, second = (build_dataset(16, 64, seed=3, tokenizer=tokenizer) for _ in range(2))
    assert torch.equal(first.images, second.images) and torch.equal(first.token_ids, second.token_ids)
    assert first.images.shape == (16, 3, 64, 64) and first.images.dtype == torch.uint8
    assert first.token_ids.shape == (16, 4, 77)
    assert first.empty_ids[0] == 49406 and (first.empty_ids[1:] == 49407).all()  # BOS, then EOS/pad
    ids = caption_batch(first, torch.arange(16).repeat(50), torch.Generator().manual_seed(0), dropout=0.1)
    dropped = (ids == first.empty_ids).all(dim=1).float().mean()
    assert 0.05 < dropped < 0.15


def test_standardized_vae_keeps_decoding_and_gives_unit_latents():
    tokenizer = load_clip_tokenizer()
    data = build_dataset(32, 64, seed=0, tokenizer=tokenizer)
    vae = build_vae(family_config("sd15", "vae/config.json"), (32, 32, 32, 32), 1, 64)
    train_vae(vae, data.images, steps=2, batch_size=4, learning_rate=1e-3, kl_weight=1e-4, seed=0)
    means, stds = posterior_moments(vae, data.images)
    with torch.no_grad():
        before = vae.decode(means[:4]).sample
    mapped_means, mapped_stds = standardized_moments(means, stds, *standardize_latents(vae, means))
    new_means, new_stds = posterior_moments(vae, data.images)
    assert torch.allclose(new_means, mapped_means, atol=1e-4) and torch.allclose(new_stds, mapped_stds, rtol=1e-3)
    scaled = new_means * vae.config.scaling_factor
    assert torch.allclose(scaled.mean(dim=(0, 2, 3)), torch.zeros(4), atol=1e-4)
    assert abs(float(scaled.std()) - 1.0) < 1e-3
    with torch.no_grad():
        after = vae.decode(new_means[:4]).sample
    assert torch.allclose(before, after, atol=1e-4)  # the same decoder function, reparametrised


def test_ema_follows_the_formula():
    layer = torch.nn.Linear(2, 2)
    ema = ExponentialMovingAverage([layer], decay=0.9)
    start = layer.weight.detach().clone()
    with torch.no_grad():
        layer.weight.add_(1.0)
    ema.update()  # d = min(0.9, 2/11)
    decay = 2 / 11
    assert torch.allclose(ema.shadow[0], decay * start + (1 - decay) * layer.weight)
    ema.copy_to_models()
    assert torch.allclose(layer.weight, ema.shadow[0])


def test_training_writes_a_checkpoint_the_app_loader_reads(tmp_path, capsys):
    path = train(TINY, tmp_path / "tiny-shapes.safetensors")
    output = capsys.readouterr().out
    assert "VAE" in output and "UNet + text encoder" in output and "loss=" in output
    assert "text encoder warm-up" in output and "VAE decoder refinement" in output
    assert "sampled 6 latents" in output and "VAE decoder on the model's samples" in output
    # the decoder is fitted to the finished denoiser: all denoiser stages come before the decoder stages
    assert output.index("UNet + text encoder, continued") < output.index("UNet + text encoder, high-noise focus")
    assert output.index("UNet + text encoder, high-noise focus") < output.index("VAE decoder refinement")
    state_dict, metadata, info = check_shapes_checkpoint(path)
    components = load_components(state_dict, info, metadata=metadata)
    assert components.native_size == 64
    assert components.text_encoder.config.vocab_size == 49408
    assert list(components.unet.config.block_out_channels) == [32, 64]
    pipe = build_pipeline(components.unet, components.vae, components.text_encoder, components.tokenizer,
                          components.scheduler_config)
    image, = generate(pipe, ["a red circle on a blue background"], [1], 64, steps=2)
    assert image.size == (64, 64)


@pytest.mark.parametrize("stages", [4, 1])  # shapes-v2's layout; the shipped recipe's single stage
def test_denoiser_stage_cache_is_kept_and_reused(tmp_path, stages):
    recipe = TINY if stages == 4 else dataclasses.replace(TINY, later_stages=())
    cache = tmp_path / "denoiser.pt"
    first_lines, second_lines = [], []
    first = train(recipe, tmp_path / "first.safetensors", log=first_lines.append, denoiser_file=cache)
    assert cache.is_file() and any("denoiser stages saved" in line for line in first_lines)
    assert torch.load(cache, weights_only=True)["stages"] == recipe.denoiser_stages == stages
    second = train(recipe, tmp_path / "second.safetensors", log=second_lines.append, denoiser_file=cache)
    assert any("read from" in line for line in second_lines)
    assert not any("denoiser trained" in line for line in second_lines)
    # the run from the cache writes the file the run that made it wrote: the decoder stages sample with the
    # cached UNet, so it has to compute exactly as the freshly trained one did
    before, _ = read_checkpoint(first)
    after, _ = read_checkpoint(second)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_a_denoiser_cache_from_an_earlier_recipe_gets_only_the_stages_it_lacks(tmp_path, capsys):
    """Caches written before the high-noise stage existed hold two stages (no count stored); a recipe that adds
    a stage finds a complete cache of its predecessor. Only the missing stages run on them, and the cache is
    rewritten whole with the new count."""
    cache = tmp_path / "denoiser.pt"
    train(TINY, tmp_path / "full.safetensors", log=lambda _: None, denoiser_file=cache)
    complete = torch.load(cache, weights_only=True)
    added = LaterStage("added", steps=2, seed_offset=9, warmup=1, high_noise_share=0.25, high_noise_from=700)
    longer = dataclasses.replace(TINY, later_stages=(*TINY.later_stages, added))
    focus = ["high-noise focus", "high-noise focus, second"]
    for recipe, held, expected in ((TINY, 2, focus), (TINY, 3, focus[1:]), (longer, 4, ["added"]),
                                   (longer, 2, [*focus, "added"])):
        saved = {"unet": complete["unet"], "text_encoder": complete["text_encoder"]}
        torch.save({**saved, "stages": held} if held != 2 else saved, cache)  # two-stage caches had no count
        capsys.readouterr()
        lines = []
        train(recipe, tmp_path / "again.safetensors", log=lines.append, denoiser_file=cache)
        output = capsys.readouterr().out
        assert any(f"after {held} of {recipe.denoiser_stages} denoiser stages" in line for line in lines)
        ran = [stage.label for stage in recipe.later_stages if f"UNet + text encoder, {stage.label}:" in output]
        assert ran == expected
        resaved = torch.load(cache, weights_only=True)
        assert resaved["stages"] == recipe.denoiser_stages
        assert any(not torch.equal(complete["unet"][k], resaved["unet"][k]) for k in complete["unet"])
        assert not (tmp_path / "denoiser.pt.partial").exists()


def test_a_denoiser_cache_with_more_stages_than_the_recipe_is_refused(tmp_path):
    cache = tmp_path / "denoiser.pt"
    train(TINY, tmp_path / "full.safetensors", log=lambda _: None, denoiser_file=cache)
    shorter = dataclasses.replace(TINY, later_stages=TINY.later_stages[:1])
    with pytest.raises(ValueError, match="holds 4 denoiser stages; this recipe has 2"):
        train(shorter, tmp_path / "other.safetensors", log=lambda _: None, denoiser_file=cache)
    assert torch.load(cache, weights_only=True)["stages"] == 4  # left as it was
    assert not (tmp_path / "other.safetensors").exists()


def test_timestep_focus_draws_its_share_at_high_noise_and_leaves_uniform_draws_alone():
    schedule = DDPMScheduler.from_config(family_config("sd15", "scheduler/scheduler_config.json"))
    latents = torch.zeros(4000, 4, 1, 1)
    plain = add_noise(schedule, latents, torch.Generator().manual_seed(5), 5.0)
    generator = torch.Generator().manual_seed(5)
    torch.randn(latents.shape, generator=generator)
    assert torch.equal(plain.timesteps, torch.randint(1000, (4000,), generator=generator))  # the old draw
    focused = add_noise(schedule, latents, torch.Generator().manual_seed(5), 5.0, TimestepFocus(0.5, 500))
    assert (focused.timesteps[:2000] >= 500).all()
    assert torch.equal(focused.timesteps[2000:], plain.timesteps[2000:])  # the rest stays uniform
    assert 0.7 < float((focused.timesteps >= 500).float().mean()) < 0.8


def test_v_prediction_targets_velocity_with_the_same_weight_on_the_x0_error_as_epsilon():
    config = family_config("sd15", "scheduler/scheduler_config.json")
    latents = torch.randn(64, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    wrong_x0 = latents + 0.1 * torch.randn(latents.shape, generator=torch.Generator().manual_seed(2))
    losses = {}
    for prediction_type in ("epsilon", "v_prediction"):
        schedule = DDPMScheduler.from_config({**config, "prediction_type": prediction_type})
        noised = add_noise(schedule, latents, torch.Generator().manual_seed(5), 5.0)
        alpha = schedule.alphas_cumprod[noised.timesteps].view(-1, 1, 1, 1)
        assert torch.allclose(noised.noisy, alpha.sqrt() * latents + (1 - alpha).sqrt() * noised.noise, atol=1e-5)
        # the same wrong guess of x₀ in each parametrisation (ε from x_t and x₀; v = √ᾱ·ε − √(1−ᾱ)·x₀)
        epsilon = (noised.noisy - alpha.sqrt() * wrong_x0) / (1 - alpha).sqrt()
        if prediction_type == "epsilon":
            assert torch.equal(noised.target, noised.noise)
            predicted = epsilon
        else:
            velocity = alpha.sqrt() * noised.noise - (1 - alpha).sqrt() * latents
            assert torch.allclose(noised.target, velocity, atol=1e-5)
            predicted = alpha.sqrt() * epsilon - (1 - alpha).sqrt() * wrong_x0
        losses[prediction_type] = weighted_error(noised, predicted)
    snr = (alpha / (1 - alpha)).flatten()
    expected = (snr.clamp(max=5.0) * (wrong_x0 - latents).pow(2).mean(dim=(1, 2, 3))).mean()  # min(SNR, γ)·‖Δx₀‖²
    assert torch.allclose(losses["epsilon"], expected, rtol=1e-3)
    assert torch.allclose(losses["v_prediction"], expected, rtol=1e-3)


def test_the_snr_floor_lifts_only_the_high_noise_weights_and_draws_the_same_batch():
    """The x₀ error weighs max(min(SNR, γ), floor): at t ≈ 999 (SNR ≈ 0.005) the floor sets the weight, at low
    noise min(SNR, γ) still does; the noise, timesteps and targets are the ones drawn without a floor."""
    config = family_config("sd15", "scheduler/scheduler_config.json")
    latents = torch.randn(256, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    for prediction_type, per_x0 in (("epsilon", lambda snr: snr), ("v_prediction", lambda snr: snr + 1)):
        schedule = DDPMScheduler.from_config({**config, "prediction_type": prediction_type})
        plain = add_noise(schedule, latents, torch.Generator().manual_seed(5), 5.0)
        floored = add_noise(schedule, latents, torch.Generator().manual_seed(5), 5.0, snr_floor=0.2)
        assert torch.equal(plain.timesteps, floored.timesteps) and torch.equal(plain.target, floored.target)
        alpha = schedule.alphas_cumprod[plain.timesteps]
        snr = alpha / (1 - alpha)
        assert torch.allclose(plain.weight * per_x0(snr), snr.clamp(max=5.0), rtol=1e-4)
        assert torch.allclose(floored.weight * per_x0(snr), snr.clamp(max=5.0).clamp(min=0.2), rtol=1e-4)
        high, low = snr < 0.2, snr >= 0.2
        assert high.sum() > 50 and low.sum() > 50  # about 40 % of t have SNR < 0.2
        assert (floored.weight[high] > plain.weight[high]).all()
        assert torch.equal(floored.weight[low], plain.weight[low])


def test_epsilon_from_output_reads_a_v_prediction_as_the_noise_it_implies():
    config = family_config("sd15", "scheduler/scheduler_config.json")
    latents = torch.randn(32, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    for prediction_type in ("epsilon", "v_prediction"):
        schedule = DDPMScheduler.from_config({**config, "prediction_type": prediction_type})
        noised = add_noise(schedule, latents, torch.Generator().manual_seed(4), 5.0)
        recovered = epsilon_from_output(schedule, noised.target, noised.noisy, noised.timesteps)
        assert torch.allclose(recovered, noised.noise, atol=1e-4)


def test_cli_flags_reach_the_recipe(tmp_path, monkeypatch):
    seen = {}

    def fake_train(recipe, out, device, vae_file, stop_after_vae, denoiser_file):
        seen.update(recipe=recipe, out=out, device=device)

    monkeypatch.setattr("modules.training.train_default_model.train", fake_train)
    main(["--out", str(tmp_path / "x.safetensors"), "--steps", "7", "--vae-steps", "5", "--seed", "3",
          "--device", "cpu", "--threads", "1", "--scenes", "99"])
    recipe = seen["recipe"]
    assert (recipe.unet_steps, recipe.vae_steps, recipe.seed, recipe.scenes) == (7, 5, 3, 99)
    assert str(seen["device"]) == "cpu"


def test_linear_start_lets_a_flat_colour_through_the_output_norm():
    """A plain GroupNorm keeps no absolute level (twice the signal gives the same output); with the carrier
    pattern the signal passes unchanged, so a flat colour and its brightness survive."""
    vae = build_vae(family_config("sd15", "vae/config.json"), (96, 32, 32, 96), 1, 64)
    start_as_linear_autoencoder(vae)
    norm = vae.decoder.conv_norm_out
    carrier = -norm.bias.detach().view(1, -1, 1, 1)
    amplitude = torch.linspace(-0.3, 0.3, 32)  # the error is second order: ~ (2/3)·a²/carrier
    signal = torch.stack([torch.zeros(32), amplitude, -amplitude], dim=1).reshape(1, 96, 1, 1).expand(1, 96, 8, 8)
    with torch.no_grad():
        passed, doubled = norm(carrier + signal), norm(carrier + 2 * signal)
        plain = torch.nn.functional.group_norm(signal, 32, eps=1e-12)
        plain_doubled = torch.nn.functional.group_norm(2 * signal, 32, eps=1e-12)
    assert torch.allclose(passed, signal, atol=0.02) and torch.allclose(doubled, 2 * signal, atol=0.05)
    assert torch.allclose(plain, plain_doubled, atol=1e-5)
    # every residual branch starts at zero: the blocks are identities
    assert all(resnet.conv2.weight.abs().max() == 0 for block in vae.decoder.up_blocks for resnet in block.resnets)


def test_decoder_learns_from_the_models_own_samples(tmp_path):
    """The last stage: SDEdit samples are reproducible, one per requested image, and only the decoder moves."""
    path = train(TINY, tmp_path / "tiny.safetensors", log=lambda _: None)
    state_dict, metadata, info = check_shapes_checkpoint(path)
    components = load_components(state_dict, info, metadata=metadata)
    unet, vae, text_encoder = (m.float().eval() for m in (components.unet, components.vae, components.text_encoder))
    data = build_dataset(12, 64, seed=5, tokenizer=load_clip_tokenizer())
    means, stds = posterior_moments(vae, data.images)
    options = SamplingOptions(count=5, first_step=(14, 18), guidance=(4, 9), batch_size=3, seed=0)
    config = components.scheduler_config
    first = sample_latents(unet, text_encoder, config, data, means, vae.config.scaling_factor, options)
    second = sample_latents(unet, text_encoder, config, data, means, vae.config.scaling_factor, options)
    assert first.latents.shape == (5, 4, 8, 8) and torch.equal(first.latents, second.latents)
    assert torch.equal(first.indices, second.indices) and int(first.indices.max()) < 12
    # a sample differs from the clean latent it started from (the model drew part of it)
    assert not torch.allclose(first.latents, means[first.indices], atol=1e-3)

    encoder = [p.detach().clone() for p in vae.encoder.parameters()]
    decoder = [p.detach().clone() for p in vae.decoder.parameters()]
    refine_decoder(vae, data.images, (means, stds), steps=2, batch_size=4, learning_rate=1e-3, seed=0,
                   sampled=first, sampled_per_batch=2)
    assert all(torch.equal(a, b) for a, b in zip(encoder, vae.encoder.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(decoder, vae.decoder.parameters()))


def test_refit_decoder_runs_only_the_last_stage_on_a_checkpoint(tmp_path):
    base = train(TINY, tmp_path / "base.safetensors", log=lambda _: None)
    lines = []
    out = refit_decoder(TINY, base, tmp_path / "refit.safetensors", log=lines.append)
    assert any("sampled 6 latents" in line for line in lines)
    before, _ = read_checkpoint(base)
    after, _ = read_checkpoint(out)
    kept = ("model.diffusion_model.", "cond_stage_model.", "first_stage_model.encoder.")
    unchanged = [k for k in before if k.startswith(kept)]
    assert unchanged and all(torch.equal(before[k], after[k]) for k in unchanged)
    decoder = [k for k in before if k.startswith("first_stage_model.decoder.")]
    assert any(not torch.equal(before[k], after[k]) for k in decoder)


def test_continue_denoiser_trains_only_the_unet_and_text_encoder_of_a_checkpoint(tmp_path, monkeypatch,
                                                                                   capsys):
    base = train(TINY, tmp_path / "base.safetensors", log=lambda _: None)
    out = continue_from(TINY, base, tmp_path / "continued.safetensors", log=lambda _: None)
    check_shapes_checkpoint(out)
    before, _ = read_checkpoint(base)
    after, metadata = read_checkpoint(out)
    vae = [k for k in before if k.startswith("first_stage_model.")]
    assert vae and all(torch.equal(before[k], after[k]) for k in vae)
    for prefix in ("model.diffusion_model.", "cond_stage_model."):
        assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith(prefix))
    first_later_stage = json.loads(metadata["training_recipe"])["later_stages"][0]
    assert first_later_stage["label"] == "continued" and first_later_stage["steps"] == 2
    # a recipe without later stages (the shipped one) continues with `CONTINUED` (here 2 steps of it)
    monkeypatch.setattr("modules.training.train_default_model.CONTINUED",
                        LaterStage("continued, default", steps=2, seed_offset=123, warmup=1))
    capsys.readouterr()
    plain = continue_from(dataclasses.replace(TINY, later_stages=()), base, tmp_path / "plain.safetensors",
                          log=lambda _: None)
    assert "UNet + text encoder, continued, default:" in capsys.readouterr().out
    resumed, _ = read_checkpoint(plain)
    assert any(not torch.equal(before[k], resumed[k]) for k in before if k.startswith("model.diffusion_model."))
