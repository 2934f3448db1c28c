"""Seeds and initial noise: A1111 CPU-RNG semantics, batch independence, variation seeds, seed resize."""
from __future__ import annotations

import random

import pytest
import torch

from modules.engine.seeds import MAX_SEED, create_noise, image_seeds, resolve_seed, slerp

SHAPE = (4, 8, 12)  # [C, H, W] latent of a 96x64 image


def test_noise_is_torch_randn_from_a_cpu_generator_per_seed() -> None:
    noise = create_noise(SHAPE, [123])
    expected = torch.randn(SHAPE, generator=torch.Generator("cpu").manual_seed(123))
    assert noise.shape == (1, *SHAPE) and noise.dtype == torch.float32 and noise.device.type == "cpu"
    assert torch.equal(noise[0], expected)


def test_noise_is_deterministic_and_seed_plus_one_differs() -> None:
    assert torch.equal(create_noise(SHAPE, [42]), create_noise(SHAPE, [42]))
    assert not torch.allclose(create_noise(SHAPE, [42]), create_noise(SHAPE, [43]))


def test_noise_does_not_depend_on_the_batch() -> None:
    batch = create_noise(SHAPE, [5, 6])
    assert torch.equal(batch[0], create_noise(SHAPE, [5])[0])
    assert torch.equal(batch[1], create_noise(SHAPE, [6])[0])


def test_subseed_strength_zero_is_plain_and_one_is_the_subseed() -> None:
    plain = create_noise(SHAPE, [5])
    assert torch.equal(create_noise(SHAPE, [5], subseeds=[9], subseed_strength=0.0), plain)
    full = create_noise(SHAPE, [5], subseeds=[9], subseed_strength=1.0)
    assert torch.allclose(full, create_noise(SHAPE, [9]), atol=1e-5)
    half = create_noise(SHAPE, [5], subseeds=[9], subseed_strength=0.5)
    assert not torch.allclose(half, plain) and not torch.allclose(half, full)


def test_variation_noise_of_a_batch_matches_single_images() -> None:
    batch = create_noise(SHAPE, [5, 5], subseeds=[9, 10], subseed_strength=0.3)
    assert torch.equal(batch[1], create_noise(SHAPE, [5], subseeds=[10], subseed_strength=0.3)[0])


def test_slerp_keeps_noise_magnitude() -> None:
    low = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    high = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2))
    mixed = slerp(0.5, low, high)
    assert abs(float(mixed.std()) - 1.0) < 0.15  # a plain lerp would shrink it to ≈ 0.71
    assert torch.allclose(slerp(0.0, low, high), low, atol=1e-5)


def test_seed_resize_pastes_the_original_noise_centred() -> None:
    # target 96x64 px (latent 8x12) from an original 64x64 px (latent 8x8): columns 2..10 hold the old noise
    resized = create_noise(SHAPE, [77], seed_resize_from=(64, 64))
    original = create_noise((4, 8, 8), [77])
    assert resized.shape == (1, *SHAPE)
    assert torch.equal(resized[0, :, :, 2:10], original[0])
    assert not torch.equal(resized[0, :, :, :2], original[0, :, :, :2])


def test_seed_resize_from_a_larger_size_crops_the_centre() -> None:
    resized = create_noise((4, 8, 8), [77], seed_resize_from=(128, 64))  # original latent 8x16
    original = create_noise((4, 8, 16), [77])
    assert torch.equal(resized[0], original[0, :, :, 4:12])


def test_seed_resize_ignored_when_unset_or_zero() -> None:
    plain = create_noise(SHAPE, [3])
    assert torch.equal(create_noise(SHAPE, [3], seed_resize_from=(0, 0)), plain)
    assert torch.equal(create_noise(SHAPE, [3], seed_resize_from=(96, 64)), plain)


def test_resolve_seed() -> None:
    rng = random.Random(0)
    for _ in range(100):
        assert 0 <= resolve_seed(-1, rng) < MAX_SEED
    assert 0 <= resolve_seed(None) < MAX_SEED
    assert resolve_seed(-1, random.Random(5)) == resolve_seed(-1, random.Random(5))
    assert resolve_seed(1234) == 1234


def test_image_seeds_follow_a1111() -> None:
    assert image_seeds(100, 3, 50, 0.0) == ([100, 101, 102], [50, 51, 52])
    assert image_seeds(100, 3, 50, 0.4) == ([100, 100, 100], [50, 51, 52])
    with pytest.raises(ValueError, match="resolve"):
        image_seeds(-1, 2, 0, 0.0)
