"""Infotext: exact A1111 layout, parsing A1111's own strings, round trips, mapping to a request."""
from __future__ import annotations

import re

import pytest

from modules.engine.infotext import (
    VERSION,
    apply_infotext,
    checkpoint_candidates,
    format_infotext,
    parse_infotext,
    request_fields_from_infotext,
    split_sampler_schedule,
)
from modules.engine.request import GenerationRequest, HiresOptions

EXAMPLE_PARAMS = {
    "Steps": 20, "Sampler": "DPM++ 2M", "Schedule type": "Karras", "CFG scale": 7, "Seed": 1234567890,
    "Size": "512x768", "Model hash": "0123456789", "Model": "myModel_v1", "VAE hash": "abcdef0123",
    "VAE": "vae-ft-mse.safetensors", "Denoising strength": 0.45, "Clip skip": 2, "RNG": "CPU",
    "Hires upscale": 2, "Hires steps": 15, "Hires upscaler": "Latent",
    "Lora hashes": "detail: 0123456789ab", "TI hashes": "easyneg: 0123456789ab", "Version": "mywebui-0.1.0",
}
EXAMPLE_TEXT = (
    "a photo of a cat\n"
    "Negative prompt: blurry\n"
    "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1234567890, Size: 512x768, "
    "Model hash: 0123456789, Model: myModel_v1, VAE hash: abcdef0123, VAE: vae-ft-mse.safetensors, "
    "Denoising strength: 0.45, Clip skip: 2, RNG: CPU, Hires upscale: 2, Hires steps: 15, Hires upscaler: Latent, "
    'Lora hashes: "detail: 0123456789ab", TI hashes: "easyneg: 0123456789ab", Version: mywebui-0.1.0'
)

A1111_SAMPLE = (
    "masterpiece, best quality, 1girl, (silver hair:1.2), <lora:detail_tweaker:0.8>\n"
    "Negative prompt: lowres, bad anatomy, (worst quality:1.4), easynegative\n"
    "Steps: 25, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 3456789012, Size: 512x768, "
    "Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, VAE hash: 735e4c3a44, "
    "VAE: vae-ft-mse-840000-ema-pruned.safetensors, Denoising strength: 0.45, Clip skip: 2, "
    "Hires upscale: 2, Hires steps: 15, Hires upscaler: R-ESRGAN 4x+, "
    'Lora hashes: "detail_tweaker: 7c6ab0f2a5b1", TI hashes: "easynegative: c74b4e810b03", Version: v1.10.1'
)


def test_format_matches_a1111_example_exactly():
    assert format_infotext("a photo of a cat", "blurry", EXAMPLE_PARAMS) == EXAMPLE_TEXT


def test_format_sorts_core_keys_and_keeps_extras_in_insertion_order():
    shuffled = dict(reversed(list(EXAMPLE_PARAMS.items())))
    shuffled["User"] = "alice"
    text = format_infotext("a photo of a cat", "blurry", shuffled)
    last_line = text.split("\n")[-1]
    # extras were inserted reversed, so they come out reversed; Version then User end the line
    assert last_line.startswith("Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed:")
    assert ', RNG: CPU, TI hashes: "easyneg: 0123456789ab", Lora hashes: "detail: 0123456789ab", ' in last_line
    assert last_line.endswith("Hires upscale: 2, Version: mywebui-0.1.0, User: alice")


def test_format_omits_empty_negative_none_and_empty_values():
    text = format_infotext("cat", "", {"Steps": 20, "Seed": 1, "Model": None, "VAE": "", "Sampler": "Euler"})
    assert text == "cat\nSteps: 20, Sampler: Euler, Seed: 1"


def test_format_quotes_values_with_commas_colons_newlines_as_json():
    text = format_infotext("p", "", {"Steps": 1, "Hires prompt": "a, b\nc", "Note": "x: y", "Name": "日本"})
    assert text.endswith('Steps: 1, Hires prompt: "a, b\\nc", Note: "x: y", Name: 日本')


def test_format_float_and_int_values_use_str():
    text = format_infotext("p", "", {"CFG scale": 7.0, "Steps": 20, "Seed": 5})
    assert text == "p\nSteps: 20, CFG scale: 7.0, Seed: 5"


def test_version_is_not_a_pep440_version():
    # PEP 440 public version pattern (simplified): optional epoch, release digits, pre/post/dev parts
    pep440 = re.compile(r"^v?(\d+!)?\d+(\.\d+)*((a|b|rc)\d+)?(\.post\d+)?(\.dev\d+)?(\+[a-z0-9.]+)?$", re.I)
    assert not pep440.match(VERSION)
    assert pep440.match("v1.10.1") and pep440.match("0.1.0")


def test_parse_a1111_sample():
    parsed = parse_infotext(A1111_SAMPLE)
    assert parsed["Prompt"] == "masterpiece, best quality, 1girl, (silver hair:1.2), <lora:detail_tweaker:0.8>"
    assert parsed["Negative prompt"] == "lowres, bad anatomy, (worst quality:1.4), easynegative"
    assert parsed["Steps"] == "25"
    assert parsed["Sampler"] == "DPM++ 2M"
    assert parsed["Schedule type"] == "Karras"
    assert parsed["Size-1"] == "512" and parsed["Size-2"] == "768" and "Size" not in parsed
    assert parsed["Model hash"] == "6ce0161689"
    assert parsed["VAE"] == "vae-ft-mse-840000-ema-pruned.safetensors"
    assert parsed["Hires upscaler"] == "R-ESRGAN 4x+"
    assert parsed["Lora hashes"] == "detail_tweaker: 7c6ab0f2a5b1"
    assert parsed["TI hashes"] == "easynegative: c74b4e810b03"
    assert parsed["Version"] == "v1.10.1"
    # A1111 defaults for missing keys
    assert parsed["RNG"] == "GPU"
    assert parsed["Hires sampler"] == "Use same sampler"
    assert parsed["Hires schedule type"] == "Use same scheduler"
    assert parsed["Hires checkpoint"] == "Use same checkpoint"
    assert parsed["Masked area padding"] == 32
    assert parsed["Emphasis"] == "Original"  # the prompt uses brackets


def test_parse_defaults_when_keys_missing():
    parsed = parse_infotext("cat\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512")
    assert parsed["Clip skip"] == "1"
    assert parsed["Schedule type"] == "Automatic"
    assert parsed["RNG"] == "GPU"
    assert parsed["Mask mode"] == "Inpaint masked"
    assert parsed["Inpaint area"] == "Whole picture"
    assert "Emphasis" not in parsed  # no brackets in the prompt
    assert parse_infotext("cat\nSteps: 20, Sampler: Euler, Seed: 1", defaults=False) == {
        "Prompt": "cat", "Negative prompt": "", "Steps": "20", "Sampler": "Euler", "Seed": "1",
    }


@pytest.mark.parametrize(
    ("legacy", "sampler", "schedule"),
    [
        ("DPM++ 2M Karras", "DPM++ 2M", "Karras"),
        ("DPM++ SDE Karras", "DPM++ SDE", "Karras"),
        ("DPM++ 2M SDE Exponential", "DPM++ 2M SDE", "Exponential"),
        ("DPM++ 2M SGMUniform", "DPM++ 2M", "SGM Uniform"),
        ("DPM++ 2M SGM Uniform", "DPM++ 2M", "SGM Uniform"),
        ("DPM++ 2M karras", "DPM++ 2M", "Karras"),
        ("Euler a", "Euler a", None),
        ("DDIM", "DDIM", None),
    ],
)
def test_split_legacy_sampler_names(legacy, sampler, schedule):
    assert split_sampler_schedule(legacy) == (sampler, schedule)


def test_parse_legacy_sampler_gives_sampler_and_schedule():
    parsed = parse_infotext("cat\nSteps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 1, Size: 512x512")
    assert parsed["Sampler"] == "DPM++ 2M" and parsed["Schedule type"] == "Karras"
    fields = request_fields_from_infotext(parsed)
    assert fields["sampler_name"] == "DPM++ 2M" and fields["scheduler"] == "Karras"
    # also when handed the raw, unsplit value
    raw = request_fields_from_infotext({"Sampler": "DPM++ SDE Karras"})
    assert raw == {"sampler_name": "DPM++ SDE", "scheduler": "Karras"}


@pytest.mark.parametrize("cfg_text", ["7.0", "7"])
def test_cfg_scale_float_and_int_both_parse(cfg_text):
    parsed = parse_infotext(f"cat\nSteps: 20, Sampler: Euler, CFG scale: {cfg_text}, Seed: 1")
    assert parsed["CFG scale"] == cfg_text
    assert request_fields_from_infotext(parsed)["cfg_scale"] == 7.0


def test_last_line_with_fewer_than_three_pairs_stays_in_prompt():
    parsed = parse_infotext("a cat\nstyle: oil, mood: calm")
    assert parsed["Prompt"] == "a cat\nstyle: oil, mood: calm"
    assert "style" not in parsed and "mood" not in parsed
    assert parse_infotext("just a prompt", defaults=False) == {"Prompt": "just a prompt", "Negative prompt": ""}


ROUND_TRIP_CASES = [
    ("a cat", "", {"Steps": "20", "Sampler": "Euler a", "Seed": "1"}),
    (
        'a "quoted" cat, with commas: and colons',
        'no "dogs", ever: never',
        {"Steps": "2", "Seed": "1", "CFG scale": "7.5"},
    ),
    ("line one\nline two\nline three", "neg one\nneg two", {"Steps": "5", "Sampler": "Euler", "Seed": "42"}),
    ("日本語のプロンプト, ünïcödé ✓", "負の", {"Steps": "20", "Model": "模型", "Seed": "3"}),
    ("a cat\nstyle: oil, mood: calm", "", {"Steps": "20", "Sampler": "Euler", "Seed": "1"}),
    ("p", "", {
        "Steps": "20", "Seed": "1", "Sampler": "Euler",
        "Hires prompt": 'multi\nline, with "quotes", colons: and \\ backslash',
        "Lora hashes": "a: 0123456789ab, b: 456789abcdef",
        "Quoted": '"starts with a quote"',
        "Emoji": "🐱 cat",
    }),
]


@pytest.mark.parametrize(("prompt", "negative", "params"), ROUND_TRIP_CASES)
def test_round_trip(prompt, negative, params):
    parsed = parse_infotext(format_infotext(prompt, negative, params), defaults=False)
    assert parsed == {"Prompt": prompt, "Negative prompt": negative, **params}


def test_round_trip_of_size_values():
    text = format_infotext("p", "", {"Steps": 20, "Seed": 1, "Size": "640x480", "Seed resize from": "512x512"})
    parsed = parse_infotext(text, defaults=False)
    assert (parsed["Size-1"], parsed["Size-2"]) == ("640", "480")
    assert (parsed["Seed resize from-1"], parsed["Seed resize from-2"]) == ("512", "512")


def test_request_fields_from_a1111_sample():
    fields = request_fields_from_infotext(parse_infotext(A1111_SAMPLE))
    assert fields["prompt"].startswith("masterpiece")
    assert fields["negative_prompt"].endswith("easynegative")
    assert fields["steps"] == 25 and fields["cfg_scale"] == 7.0 and fields["seed"] == 3456789012
    assert (fields["width"], fields["height"]) == (512, 768)
    assert fields["sampler_name"] == "DPM++ 2M" and fields["scheduler"] == "Karras"
    assert fields["clip_skip"] == 2
    assert fields["checkpoint"] == "6ce0161689"
    assert fields["vae"] == "vae-ft-mse-840000-ema-pruned.safetensors"
    assert fields["hires"] == HiresOptions(scale=2.0, upscaler="R-ESRGAN 4x+", steps=15, denoising_strength=0.45)
    assert "denoising_strength" not in fields
    assert checkpoint_candidates(parse_infotext(A1111_SAMPLE)) == ["6ce0161689", "v1-5-pruned-emaonly"]


def test_request_fields_variation_seed_resize_and_img2img_denoising():
    text = (
        "p\nSteps: 30, Sampler: Euler, CFG scale: 5, Seed: 7, Size: 768x512, Model: foo, "
        "Variation seed: 99, Variation seed strength: 0.3, Seed resize from: 640x448, Denoising strength: 0.6"
    )
    fields = request_fields_from_infotext(parse_infotext(text))
    assert fields["subseed"] == 99 and fields["subseed_strength"] == 0.3
    assert (fields["seed_resize_from_w"], fields["seed_resize_from_h"]) == (640, 448)
    assert fields["denoising_strength"] == 0.6 and "hires" not in fields
    assert fields["checkpoint"] == "foo"
    assert fields["clip_skip"] == 1  # A1111 default for a missing Clip skip


def test_request_fields_only_keys_present_and_bad_numbers_skipped():
    assert request_fields_from_infotext({"Steps": "abc", "Seed": "12"}) == {"seed": 12}


def test_hires_resize_and_old_first_pass_size():
    resize = request_fields_from_infotext(parse_infotext(
        "p\nSteps: 20, Sampler: Euler, Seed: 1, Size: 512x512, Denoising strength: 0.5, Hires resize: 1024x768"
    ))
    assert resize["hires"].resize_x == 1024 and resize["hires"].resize_y == 768
    old = parse_infotext("p\nSteps: 20, Sampler: Euler, Seed: 1, Size: 1024x1024, First pass size: 0x0")
    assert (old["Size-1"], old["Size-2"]) == ("512", "512")
    assert (old["Hires resize-1"], old["Hires resize-2"]) == ("1024", "1024")


def test_apply_infotext_builds_a_request():
    request = apply_infotext(GenerationRequest(batch_size=2), A1111_SAMPLE)
    assert request.steps == 25 and request.width == 512 and request.height == 768
    assert request.batch_size == 2  # untouched
    assert request.hires is not None and request.hires.upscaler == "R-ESRGAN 4x+"
    request.validate()
