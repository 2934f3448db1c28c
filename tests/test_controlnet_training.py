"""The ControlNet training code end to end at toy size (seconds), its data, its file format and the benchmark's
measures."""
import dataclasses
import json
import random

import numpy as np
import pytest
import torch
from diffusers import ControlNetModel, DDPMScheduler
from safetensors import safe_open

from benchmarks.shapes_controlnet import (
    benchmark_cases, control_images, controlnet_pipeline, generate_controlled, generate_plain, load_controlnet,
    mask_iou, shape_mask,
)
from modules.models.detect import detect_component_kind
from modules.models.loader import load_checkpoint_file, read_checkpoint
from modules.models.tokenizer import load_clip_tokenizer
from modules.shapes.scorer import LARGE_RADIUS
from modules.shapes.world import ShapeScene, cell_of, is_held_out, render
from modules.training.controlnet import HINT_CHANNELS, ControlBatch, FrozenModel, build_controlnet, controlnet_loss
from modules.training.controlnet_data import (
    RADIUS_RANGE, build_control_dataset, control_batch, free_shape, sample_control_scene,
)
from modules.training.controlnet_export import controlnet_from_ldm, controlnet_to_ldm
from modules.training.denoiser import add_noise, weighted_error
from modules.training.train_controlnet import Recipe, main, train

TINY = dataclasses.replace(Recipe(), scenes=6, steps=2, batch=2)


@pytest.fixture(scope="module")
def base():
    return load_checkpoint_file("models/Stable-diffusion/shapes-v3.safetensors")


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    return train(TINY, tmp_path_factory.mktemp("cn") / "tiny-canny.safetensors")


def test_free_shapes_are_labelled_with_their_cell_and_size_and_never_held_out():
    rng = random.Random(0)
    for _ in range(300):
        shape = free_shape(rng, "circle", "red")
        column, row = cell_of(shape.position)
        assert column == min(int(3 * shape.x), 2) and row == min(int(3 * shape.y), 2)
        assert RADIUS_RANGE[0] <= shape.radius <= RADIUS_RANGE[1]
        assert shape.size == ("large" if shape.radius > LARGE_RADIUS else "small")
        assert shape.radius < shape.x < 1 - shape.radius and shape.radius < shape.y < 1 - shape.radius
    scenes = [sample_control_scene(rng) for _ in range(500)]
    assert not any(is_held_out(scene) for scene in scenes)
    assert any(len(scene.shapes) == 2 for scene in scenes)  # the world's own two-shape scenes are mixed in


def test_dataset_is_deterministic_with_canny_maps_on_the_outline():
    tokenizer = load_clip_tokenizer()
    first, second = (build_control_dataset(8, 64, seed=3, tokenizer=tokenizer) for _ in range(2))
    assert torch.equal(first.native_maps, second.native_maps) and torch.equal(first.hires_maps, second.hires_maps)
    assert torch.equal(first.shapes.token_ids, second.shapes.token_ids)
    assert first.native_maps.shape == (8, 64, 64) and first.native_maps.dtype == torch.uint8
    for index, scene in enumerate(first.shapes.scenes):
        mask = shape_mask(render(scene, 64))
        edges = first.native_maps[index].numpy() > 127
        assert edges.sum() > 20
        # every edge pixel lies on the shape's boundary (within a pixel), never in flat areas
        grown = np.zeros_like(mask)
        boundary = mask ^ np.roll(mask, 1, 0) | mask ^ np.roll(mask, 1, 1)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                grown |= np.roll(np.roll(boundary, dy, 0), dx, 1)
        assert (edges & ~grown).sum() <= 2
        assert first.hires_maps[index].float().sum() > 0


def test_control_batch_mixes_native_soft_and_binary_maps_in_the_pipeline_range():
    tokenizer = load_clip_tokenizer()
    data = build_control_dataset(4, 64, seed=0, tokenizer=tokenizer)
    indices = torch.arange(4).repeat(50)
    batch = control_batch(data, indices, torch.Generator().manual_seed(0), hires_share=0.5)
    assert batch.shape == (200, 3, 64, 64) and 0 <= batch.min() and batch.max() <= 1
    assert torch.equal(batch[:, 0], batch[:, 2])
    native = (data.native_maps[indices].float() / 255).eq(batch[:, 0]).flatten(1).all(1)
    binary = batch[:, 0].eq(0).logical_or(batch[:, 0].eq(1)).flatten(1).all(1)
    assert 0.35 < native.float().mean() < 0.65  # the rest are hires maps, soft or thresholded
    assert (~binary).any() and (binary & ~native).any()


def test_a_new_controlnet_has_a_live_hint_path_but_starts_at_the_base_model(base):
    controlnet = build_controlnet(base.unet, seed=1)
    assert controlnet.controlnet_cond_embedding.conv_out.weight.abs().max() > 0
    assert torch.equal(controlnet.controlnet_cond_embedding.conv_out.weight,
                       build_controlnet(base.unet, seed=1).controlnet_cond_embedding.conv_out.weight)
    latents, context = torch.randn(2, 4, 8, 8), torch.randn(2, 77, 64)
    control = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        down, middle = controlnet(latents, 500, context, controlnet_cond=control, return_dict=False)
        features = controlnet.controlnet_cond_embedding(control)
    assert all(residual.abs().max() == 0 for residual in (*down, middle))  # zero convolutions: no change yet
    assert features.abs().mean() > 0  # ... but the hint already reaches the encoder copy, so they learn from it


def test_the_controlnet_learns_the_base_models_prediction_type(base):
    """A ControlNet for a v-prediction base must predict v: the loss follows the base's scheduler config."""
    controlnet = build_controlnet(base.unet, seed=1)
    latents = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    token_ids = load_clip_tokenizer()(["a red circle on a blue background"] * 4, padding="max_length",
                                      max_length=77, return_tensors="pt").input_ids
    batch = ControlBatch(latents, token_ids, torch.rand(4, 3, 64, 64), token_ids[0])
    losses = {}
    for prediction in ("epsilon", "v_prediction"):
        schedule = DDPMScheduler.from_config({**base.scheduler_config, "prediction_type": prediction})
        with torch.no_grad():
            loss = controlnet_loss(controlnet, FrozenModel(base.unet, base.text_encoder, schedule), batch,
                                   torch.Generator().manual_seed(3), 5.0)
            noised = add_noise(schedule, latents, torch.Generator().manual_seed(3), 5.0)  # the loss's draw
            context = base.text_encoder(token_ids).last_hidden_state
            # a new ControlNet adds zero residuals: the base UNet's prediction against the base's target
            expected = weighted_error(noised, base.unet(noised.noisy, noised.timesteps, context).sample)
        assert torch.allclose(loss, expected, rtol=1e-4)
        losses[prediction] = float(loss)
    assert abs(losses["epsilon"] - losses["v_prediction"]) > 1e-3 * losses["epsilon"]


def test_export_uses_lllyasviel_keys_and_round_trips_through_diffusers(base, tmp_path):
    controlnet = build_controlnet(base.unet)
    assert tuple(controlnet.config.conditioning_embedding_out_channels) == HINT_CHANNELS
    with torch.no_grad():
        for parameter in controlnet.parameters():
            parameter.normal_()
    state = controlnet_to_ldm(controlnet)
    assert all(key.startswith("control_model.") for key in state)
    assert "control_model.input_hint_block.14.weight" in state and "control_model.middle_block_out.0.bias" in state
    assert len(state) == len(controlnet.state_dict())
    back = controlnet_from_ldm(state, dict(controlnet.config))
    original, rebuilt = controlnet.state_dict(), back.state_dict()
    assert original.keys() == rebuilt.keys() and all(torch.equal(original[k], rebuilt[k]) for k in original)
    # diffusers' own single-file loader reads the same keys, with the config folder written from our metadata
    from modules.training.train_controlnet import save

    path = save(tmp_path / "cn.safetensors", controlnet, TINY, 64)
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    _, metadata = read_checkpoint(path)
    (config_dir / "config.json").write_text(metadata["controlnet.config"])
    loaded = ControlNetModel.from_single_file(str(path), config=str(config_dir), local_files_only=True)
    for key, tensor in loaded.state_dict().items():
        assert torch.equal(tensor.float(), original[key].half().float()), key


def test_tiny_training_run_writes_a_file_the_app_classifies_as_controlnet(tiny_file, base, capsys):
    state_dict, metadata = read_checkpoint(tiny_file)
    assert detect_component_kind(state_dict) == "controlnet"
    assert all(t.dtype == torch.float16 for t in state_dict.values() if t.is_floating_point())
    assert metadata["modelspec.architecture"] == "stable-diffusion-v1/controlnet"
    assert metadata["controlnet.preprocessor"] == "canny" and metadata["sd_native_size"] == "64"
    assert json.loads(metadata["recipe"])["steps"] == 2
    with safe_open(str(tiny_file), "pt") as handle:
        assert handle.metadata() == metadata
    controlnet = load_controlnet(tiny_file)
    zero_convs = [controlnet.controlnet_mid_block.weight, *(c.weight for c in controlnet.controlnet_down_blocks)]
    assert any(weight.abs().max() > 0 for weight in zero_convs)  # trained away from the zero start


def test_training_prints_progress_with_the_loss(tmp_path, capsys):
    train(dataclasses.replace(TINY, steps=1), tmp_path / "one-step.safetensors")
    output = capsys.readouterr().out
    assert "ControlNet" in output and "loss=" in output and "dataset: 6 scenes" in output


def test_weight_zero_gives_the_image_without_a_unit(tiny_file, base):
    cases = benchmark_cases(2)
    controls = control_images([c.scene for c in cases], 64)
    pipe = controlnet_pipeline(base, load_controlnet(tiny_file))
    zero = generate_controlled(pipe, cases, controls, 64, weight=0.0)
    plain = generate_plain(base, cases, 64)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(zero, plain))
    full = generate_controlled(pipe, cases, controls, 64, weight=1.0)
    assert any(not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(full, plain))


def test_shape_mask_iou_reads_rendered_scenes():
    scene = benchmark_cases(1)[0].scene
    shape = scene.shapes[0]
    moved = ShapeScene(scene.background, (dataclasses.replace(shape, x=shape.x + 0.05),))
    mask = shape_mask(render(scene, 64))
    area = np.pi * (shape.radius * 64) ** 2 if shape.kind != "triangle" else 1.87 * (shape.radius * 64) ** 2
    assert abs(mask.sum() - area) / area < 0.1
    assert mask_iou(mask, mask) == 1.0
    assert 0.4 < mask_iou(mask, shape_mask(render(moved, 64))) < 0.9
    assert mask_iou(mask, np.zeros_like(mask)) == 0.0


def test_cli_flags_reach_the_recipe(tmp_path, monkeypatch):
    seen = {}

    def fake_train(recipe, out, device, base):
        seen.update(recipe=recipe, out=out, device=device, base=base)

    monkeypatch.setattr("modules.training.train_controlnet.train", fake_train)
    main(["--out", str(tmp_path / "x.safetensors"), "--steps", "7", "--batch", "5", "--seed", "3",
          "--device", "cpu", "--scenes", "99"])
    recipe = seen["recipe"]
    assert (recipe.steps, recipe.batch, recipe.seed, recipe.scenes) == (7, 5, 3, 99)
    assert str(seen["device"]) == "cpu" and seen["out"].name == "x.safetensors"
