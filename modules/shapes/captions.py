"""Captions for shape scenes in varied natural English, and the reverse: a prompt → the attributes it asks for."""
from __future__ import annotations

import itertools
import random
import re
from dataclasses import dataclass

from modules.shapes.world import (
    COLOURS, POSITIONS, SHAPES, SIZES, Shape, ShapeScene, cell_of, is_held_out, make_shape, position_of,
)

SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big", "huge")}
CENTRE_PHRASES = ("in the center", "in the middle", "in the centre", "at the center", "centered")
EDGE_PHRASES = {
    "left": ("on the left", "at the left", "on the left side", "to the left"),
    "right": ("on the right", "at the right", "on the right side", "to the right"),
    "top": ("at the top", "near the top", "at the top center", "in the upper part"),
    "bottom": ("at the bottom", "near the bottom", "at the bottom center", "in the lower part"),
}
VERTICAL_WORDS = {"top": ("top", "upper"), "bottom": ("bottom", "lower")}
CORNER_FORMS = ("in the {v} {h}", "in the {v} {h} corner", "at the {v} {h}", "in the {v}-{h} corner")

# Single shape: {a_s} = "a red circle" (article included), {s} without article, {p} = " in the top left" or "".
# Both orders appear: shape first ("a red circle on a blue background") and background first.
SINGLE_TEMPLATES = (
    ("{a_s}{p} on {a_b} background", 4),
    ("{a_s} on {a_b} background{p}", 2),
    ("{a_b} background with {a_s}{p}", 2),
    ("{s}{p}, {b} background", 1),
    ("{a_s}{p} against {a_b} background", 1),
    ("a picture of {a_s}{p} on {a_b} background", 1),
    ("{b} background, {s}{p}", 1),
    ("{a_s} on a plain {b} background{p}", 1),
    ("an image of {a_s}{p} on {a_b} background", 1),
)
LEADING_POSITION_TEMPLATE = "{P}, {a_s} on {a_b} background"  # "In the top left, a red circle on a blue background"
PAIR_TEMPLATES = (
    ("{a_s1}{p1} and {a_s2}{p2} on {a_b} background", 3),
    ("{a_b} background with {a_s1}{p1} and {a_s2}{p2}", 2),
    ("{s1}{p1} and {s2}{p2}, {b} background", 1),
    ("two shapes on {a_b} background: {a_s1}{p1} and {a_s2}{p2}", 1),
)
MENTION_PROBABILITY = 0.6  # how often a caption names the size / the position


def with_article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def position_phrase(position: str, rng: random.Random) -> str:
    """A natural phrase for a grid cell: "in the upper left corner", "on the right", "in the middle"."""
    column, row = cell_of(position)
    if position == "center":
        return rng.choice(CENTRE_PHRASES)
    if column == 1 or row == 1:
        return rng.choice(EDGE_PHRASES[position])
    vertical = rng.choice(VERTICAL_WORDS["top" if row == 0 else "bottom"])
    horizontal = "left" if column == 0 else "right"
    return rng.choice(CORNER_FORMS).format(v=vertical, h=horizontal)


def shape_phrase(shape: Shape, rng: random.Random, mention_size: bool) -> str:
    words = [rng.choice(SIZE_WORDS[shape.size])] if mention_size else []
    return " ".join([*words, shape.colour, shape.kind])


def caption(
    scene: ShapeScene,
    rng: random.Random,
    *,
    mention_size: bool | None = None,
    mention_position: bool | None = None,
) -> str:
    """A caption for the scene; size and position words appear at random unless forced on or off."""
    if mention_size is None:
        mention_size = rng.random() < MENTION_PROBABILITY
    if mention_position is None:
        mention_position = rng.random() < MENTION_PROBABILITY
    background = scene.background
    if len(scene.shapes) == 1:
        return _single_caption(scene.shapes[0], background, rng, mention_size, mention_position)
    return _pair_caption(scene.shapes, background, rng, mention_position)


def _weighted(rng: random.Random, templates: tuple[tuple[str, int], ...]) -> str:
    texts, weights = zip(*templates)
    return rng.choices(texts, weights=weights)[0]


def _single_caption(shape: Shape, background: str, rng: random.Random, size: bool, position: bool) -> str:
    s = shape_phrase(shape, rng, size)
    fields = {"s": s, "a_s": with_article(s), "b": background, "a_b": with_article(background)}
    if position and rng.random() < 0.15:
        leading = position_phrase(shape.position, rng)
        return LEADING_POSITION_TEMPLATE.format(P=leading[0].upper() + leading[1:], **fields)
    fields["p"] = " " + position_phrase(shape.position, rng) if position else ""
    return _weighted(rng, SINGLE_TEMPLATES).format(**fields)


def _pair_caption(shapes: tuple[Shape, ...], background: str, rng: random.Random, position: bool) -> str:
    first, second = (shape_phrase(shape, rng, False) for shape in shapes)
    fields = {
        "s1": first, "a_s1": with_article(first), "s2": second, "a_s2": with_article(second),
        "b": background, "a_b": with_article(background),
        "p1": " " + position_phrase(shapes[0].position, rng) if position else "",
        "p2": " " + position_phrase(shapes[1].position, rng) if position else "",
    }
    return _weighted(rng, PAIR_TEMPLATES).format(**fields)


# ---- parsing -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShapeSpec:
    kind: str
    colour: str | None
    size: str | None  # None: the prompt does not say
    position: str | None


@dataclass(frozen=True)
class PromptSpec:
    background: str | None
    shapes: tuple[ShapeSpec, ...]


SIZE_OF_WORD = {word: size for size, words in SIZE_WORDS.items() for word in words}
ROW_OF_WORD = {"top": 0, "upper": 0, "bottom": 2, "lower": 2}
COLUMN_OF_WORD = {"left": 0, "right": 2}
CENTRE_WORDS = {"center", "centre", "middle", "centered", "centred"}


def parse_prompt(prompt: str) -> PromptSpec:
    """The background colour and, per shape, colour/size/position a prompt asks for (None where unsaid)."""
    clauses = [c.split() for c in re.split(r",|:|;|\band\b", prompt.lower().replace("-", " ")) if c.strip()]
    background = None
    shapes: list[ShapeSpec] = []
    loose_position: str | None = None  # a position in a clause without a shape ("In the top left, ...")
    for words in clauses:
        for i, word in enumerate(words):
            if word.startswith("background") and i > 0:
                background = next((w for w in reversed(words[max(0, i - 2):i]) if w in COLOURS), background)
        kinds = [(i, w.rstrip("s")) for i, w in enumerate(words) if w.rstrip("s") in SHAPES]
        position = _position_in(words)
        if not kinds:
            loose_position = position or loose_position
        for i, kind in kinds:
            before = words[max(0, i - 3):i]
            colour = next((w for w in reversed(before) if w in COLOURS), None)
            size = next((SIZE_OF_WORD[w] for w in before if w in SIZE_OF_WORD), None)
            shapes.append(ShapeSpec(kind, colour, size, position))
    if loose_position and len(shapes) == 1 and shapes[0].position is None:
        shapes[0] = ShapeSpec(shapes[0].kind, shapes[0].colour, shapes[0].size, loose_position)
    return PromptSpec(background, tuple(shapes))


def _position_in(words: list[str]) -> str | None:
    rows = [ROW_OF_WORD[w] for w in words if w in ROW_OF_WORD]
    columns = [COLUMN_OF_WORD[w] for w in words if w in COLUMN_OF_WORD]
    if not rows and not columns and not CENTRE_WORDS.intersection(words):
        return None
    return position_of(columns[0] if columns else 1, rows[0] if rows else 1)


# ---- the held-out evaluation prompts -------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalPrompt:
    prompt: str
    scene: ShapeScene  # one rendering of what the prompt asks for (reference only)


def held_out_scenes() -> list[ShapeScene]:
    """One canonical scene per held-out (size, colour, shape, position, background) tuple, in a fixed order."""
    rng = random.Random(0)
    scenes = []
    for background, colour, kind, size, position in itertools.product(COLOURS, COLOURS, SHAPES, SIZES, POSITIONS):
        if colour == background:
            continue
        scene = ShapeScene(background, (make_shape(rng, kind, colour, size, position),))
        if is_held_out(scene):
            scenes.append(scene)
    return scenes


def eval_prompts(count: int = 64, seed: int = 2024) -> list[EvalPrompt]:
    """`count` prompts, each naming size and position of a held-out tuple: no training caption equals them."""
    rng = random.Random(seed)
    chosen = rng.sample(held_out_scenes(), count)
    return [EvalPrompt(caption(s, rng, mention_size=True, mention_position=True), s) for s in chosen]


def further_eval_prompts(count: int = 128) -> list[EvalPrompt]:
    """A second held-out set for cross-checks: the first `count` of another draw (`eval_prompts(192)`) whose
    scene is none of the 64 benchmark prompts' scenes, so a gain on the 64 can be checked on prompts it did
    not pick."""
    benchmark = {item.scene for item in eval_prompts(64)}
    further = [item for item in eval_prompts(192) if item.scene not in benchmark]
    if count > len(further):
        raise ValueError(f"only {len(further)} further held-out prompts")
    return further[:count]
