"""Class twins and the VAE's class-separation term (`ClassSeparation`): the twin is the same scene with the other
class, and the term pushes a pair's latents apart until their distance reaches the target, then stops."""
import dataclasses
import json
import math
import random

import numpy as np
import pytest
import torch
from safetensors import safe_open

from modules.models.architecture import family_config
from modules.shapes.world import is_held_out, render, sample_scene
from modules.training.dataset import class_twins
from modules.training.train_default_model import Recipe, recipe_fields
from modules.training.vae import ClassSeparation, build_vae, train_vae


def test_a_twin_is_the_same_scene_with_the_first_shape_of_the_other_class():
    rng = random.Random(4)
    scenes = [sample_scene(rng) for _ in range(60)]
    twins = class_twins(scenes, 64, seed=0)
    assert 45 < len(twins.indices) <= 60 and twins.images.shape == (len(twins.indices), 3, 64, 64)
    allowed = {"circle": {"square"}, "square": {"circle"}, "triangle": {"circle", "square"}}
    for index, image in zip(twins.indices.tolist(), twins.images):
        scene = scenes[index]

        def with_kind(kind: str):
            return dataclasses.replace(
                scene, shapes=(dataclasses.replace(scene.shapes[0], kind=kind), *scene.shapes[1:]))

        drawn = [kind for kind in ("circle", "square", "triangle")
                 if np.array_equal(image.permute(1, 2, 0).numpy(), np.asarray(render(with_kind(kind), 64)))]
        assert len(drawn) == 1 and drawn[0] in allowed[scene.shapes[0].kind]
        assert not is_held_out(with_kind(drawn[0]))
    assert len(set(twins.indices.tolist())) == len(twins.indices)


def test_separation_pushes_close_pairs_apart_and_leaves_far_ones_alone():
    term = ClassSeparation(weight=1.0, target=0.2)
    base = torch.randn(4, 4, 8, 8)
    close = torch.cat([base, base + 0.01 * torch.randn_like(base)]).requires_grad_()
    loss = term.loss(close)
    assert float(loss) > 1.0
    loss.backward()
    moved = (close - 0.1 * close.grad).detach()
    distance = lambda z: (z[:4] - z[4:]).flatten(1).norm(dim=1).mean()  # noqa: E731
    assert distance(moved) > 1.5 * distance(close.detach())
    far = torch.cat([base, torch.randn(4, 4, 8, 8)])  # unrelated latents: ratio ≈ √2 > 0.2
    assert float(term.loss(far)) == 0.0
    # scale-free: the same pairs at any scale give the same loss
    assert math.isclose(float(term.loss(close.detach() * 7.0)), float(term.loss(close.detach())), rel_tol=1e-4)


def test_train_vae_with_twins_trains_on_pairs():
    rng = random.Random(2)
    scenes = [sample_scene(rng) for _ in range(12)]
    images = torch.from_numpy(np.stack([np.asarray(render(s, 64)) for s in scenes])).permute(0, 3, 1, 2)
    twins = class_twins(scenes, 64, seed=0)
    vae = build_vae(family_config("sd15", "vae/config.json"), (32, 32, 32, 32), 1, 64)
    losses: list[float] = []
    train_vae(vae, images, steps=3, batch_size=4, learning_rate=1e-3, kl_weight=1e-4, seed=0,
              on_step=lambda step, loss: losses.append(loss), twins=twins,
              separation=ClassSeparation(weight=10.0, target=10.0))  # unreachable target: the term dominates
    plain: list[float] = []
    vae = build_vae(family_config("sd15", "vae/config.json"), (32, 32, 32, 32), 1, 64)
    train_vae(vae, images, steps=3, batch_size=4, learning_rate=1e-3, kl_weight=1e-4, seed=0,
              on_step=lambda step, loss: plain.append(loss))
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    assert losses[0] > plain[0] + 10.0  # log(10 / ratio)² · 10 with ratio < 1
    # switched on from step 2: the first two steps carry no term, the third does
    delayed: list[float] = []
    vae = build_vae(family_config("sd15", "vae/config.json"), (32, 32, 32, 32), 1, 64)
    train_vae(vae, images, steps=3, batch_size=4, learning_rate=1e-3, kl_weight=1e-4, seed=0,
              on_step=lambda step, loss: delayed.append(loss), twins=twins,
              separation=ClassSeparation(weight=10.0, target=10.0, from_step=2))
    assert delayed[0] < losses[0] - 10.0 and delayed[1] < losses[1] - 10.0 and delayed[2] > 10.0
    with pytest.raises(ValueError, match="pass both or neither"):
        train_vae(vae, images, steps=1, batch_size=4, learning_rate=1e-3, kl_weight=1e-4, seed=0, twins=twins)


def test_the_shipped_recipe_is_stored_without_the_separation_fields():
    """The shipped file's metadata predates the term: with it off, the command still writes that metadata."""
    with safe_open("models/Stable-diffusion/shapes-v3.safetensors", "pt") as file:
        shipped = json.loads(file.metadata()["training_recipe"])
    assert json.loads(json.dumps(recipe_fields(Recipe()))) == shipped
    on = recipe_fields(dataclasses.replace(Recipe(), vae_separation_weight=0.02))
    assert on["vae_separation_weight"] == 0.02 and on["vae_separation_target"] == 0.15
    assert on["vae_separation_from"] == 0


def test_local_separation_counts_only_where_the_pair_differs():
    """A pair whose images differ in one corner: a difference there is what the term wants, the same difference
    spread over every cell (a shift of the background's code too) is penalised."""
    first = torch.zeros(2, 3, 64, 64)
    second = first.clone()
    second[:, :, 4:14, 4:14] = 1.0  # differs in latent cells (0..1, 0..1); with the one-cell rim, (0..2, 0..2)
    images = torch.cat([first, second])
    term = ClassSeparation(weight=1.0, target=0.2, local=True)
    base = torch.randn(2, 4, 8, 8)
    corner = torch.zeros(2, 4, 8, 8)
    corner[:, :, :2, :2] = 3.0
    everywhere = torch.full((2, 4, 8, 8), 3.0 * 2 / 8)  # the same norm of difference, spread over all 64 cells
    local_loss = float(term.loss(torch.cat([base, base + corner]), images=images))
    global_loss = float(term.loss(torch.cat([base, base + everywhere]), images=images))
    assert local_loss < 0.05 and global_loss > 1.0
    with pytest.raises(ValueError, match="needs the pairs' images"):
        term.loss(torch.cat([base, base + corner]))
