"""A1111 prompt syntax (parser, chunks, token counter) and prompt encoding against tiny CLIP text encoders."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from modules.engine.prompt_chunks import count_tokens, tokenize_prompt
from modules.engine.prompt_parser import (
    ExtraNetworkTag,
    extract_extra_networks,
    get_prompt_schedule,
    parse_prompt_attention,
    strip_comments,
)
from modules.engine.prompts import PromptEncoder, TextEncoderSet, encoder_input_ids
from modules.models.tokenizer import load_clip_tokenizer

BOS, EOS, COMMA = 49406, 49407, 267


# --- fixtures: the real CLIP tokenizer, tiny random text encoders ---------------------------------------------


def tiny_clip_config(hidden: int) -> CLIPTextConfig:
    # legacy ids (eos 2) as in the real configs: pooling takes the argmax token = EOS 49407
    return CLIPTextConfig(
        vocab_size=49408, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, projection_dim=16,
        bos_token_id=0, eos_token_id=2, pad_token_id=1,
    )


@pytest.fixture(scope="module")
def tokenizer():
    return load_clip_tokenizer()


@pytest.fixture(scope="module")
def open_clip_tokenizer():
    return load_clip_tokenizer(pad_token="!")


@pytest.fixture(scope="module")
def text_encoder():
    torch.manual_seed(0)
    return CLIPTextModel(tiny_clip_config(32)).eval()


@pytest.fixture(scope="module")
def text_encoder_2():
    torch.manual_seed(1)
    return CLIPTextModelWithProjection(tiny_clip_config(48)).eval()


@pytest.fixture
def sd1(tokenizer, text_encoder) -> TextEncoderSet:
    return TextEncoderSet("sd1", tokenizer, text_encoder)


@pytest.fixture
def sdxl(tokenizer, open_clip_tokenizer, text_encoder, text_encoder_2) -> TextEncoderSet:
    return TextEncoderSet("sdxl", tokenizer, text_encoder, open_clip_tokenizer, text_encoder_2)


def encode(encoders: TextEncoderSet, prompt: str, negative: str = "", **options):
    return PromptEncoder(encoders).schedule(prompt, negative, 20, **options).at(0)


def count_calls(module: torch.nn.Module) -> list[int]:
    calls = [0]
    module.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


# --- prompt editing and alternation (A1111 get_learned_conditioning_prompt_schedules docstring) ---------------

A1111_SCHEDULES = [
    ("test", [(10, "test")]),
    ("a [b:3]", [(3, "a "), (10, "a b")]),
    ("a [b: 3]", [(3, "a "), (10, "a b")]),
    ("a [[[b]]:2]", [(2, "a "), (10, "a [[b]]")]),
    ("[(a:2):3]", [(3, ""), (10, "(a:2)")]),
    ("a [b : c : 1] d", [(1, "a b  d"), (10, "a  c  d")]),
    ("a[b:[c:d:2]:1]e", [(1, "abe"), (2, "ace"), (10, "ade")]),
    ("a [unbalanced", [(10, "a [unbalanced")]),
    ("a [b:.5] c", [(5, "a  c"), (10, "a b c")]),
    ("((a][:b:c [d:3]", [(3, "((a][:b:c "), (10, "((a][:b:c d")]),
    ("[a|(b:1.1)]", [(step, "a" if step % 2 else "(b:1.1)") for step in range(1, 11)]),
    ("[fe|]male", [(step, "female" if step % 2 else "male") for step in range(1, 11)]),
    ("[fe|||]male", [(step, "female" if step % 4 == 1 else "male") for step in range(1, 11)]),
    # our additions
    ("a [b:c:7 ] d", [(7, "a b d"), (10, "a c d")]),
    ("a [b::0.3]", [(3, "a b"), (10, "a ")]),
    ("[a:b:20]", [(10, "a")]),  # past the last step: never switches
    ("[a:b:-1]", [(10, "b")]),
    ("[a:b:0.05]", [(10, "b")]),  # int(0.5) = 0 → switches before the first step
    ("a | b [c:d:5]", [(10, "a | b [c:d:5]")]),  # a bare "|" makes the prompt unparseable → literal
    (r"\[a:b:5\] [c:d:5]", [(5, r"\[a:b:5\] c"), (10, r"\[a:b:5\] d")]),
    ("[a:b]", [(10, "[a:b]")]),
    ("[[a|b]:c:0.5]", [(1, "a"), (2, "b"), (3, "a"), (4, "b"), (5, "a"), *[(step, "c") for step in range(6, 11)]]),
    # A1111's docstring still lists [[5, 'a  c'], [10, 'a {b|d{ c']] from before alternation existed; its
    # current grammar rejects the bare "|", so the prompt is literal.
    ("a [{b|d{:.5] c", [(10, "a [{b|d{:.5] c")]),
]


@pytest.mark.parametrize(("prompt", "expected"), A1111_SCHEDULES)
def test_prompt_schedule_matches_a1111(prompt, expected):
    assert get_prompt_schedule(prompt, 10) == expected


def test_prompt_schedule_of_a1111_header_example():
    prompt = (
        "fantasy landscape with a [mountain:lake:0.25] and [an oak:a christmas tree:0.75]"
        "[ in foreground::0.6][ in background:0.25] [shoddy:masterful:0.5]"
    )
    assert get_prompt_schedule(prompt, 100) == [
        (25, "fantasy landscape with a mountain and an oak in foreground shoddy"),
        (50, "fantasy landscape with a lake and an oak in foreground in background shoddy"),
        (60, "fantasy landscape with a lake and an oak in foreground in background masterful"),
        (75, "fantasy landscape with a lake and an oak in background masterful"),
        (100, "fantasy landscape with a lake and a christmas tree in background masterful"),
    ]


def test_hires_schedule_addresses_the_second_pass():
    assert get_prompt_schedule("a [b:.5] c", 10, hires_steps=10) == [(10, "a b c")]
    assert get_prompt_schedule("a [b:1.5] c", 10, hires_steps=10) == [(5, "a  c"), (10, "a b c")]
    assert get_prompt_schedule("a [b:13] c", 10, hires_steps=10) == [(3, "a  c"), (10, "a b c")]


# --- emphasis (A1111 parse_prompt_attention docstring) ---------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("normal text", [("normal text", 1.0)]),
        ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
        ("(unbalanced", [("unbalanced", 1.1)]),
        (r"\(literal\]", [("(literal]", 1.0)]),
        ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
        (
            "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
            [("a ", 1.0), ("house", 1.5730000000000004), (" ", 1.1), ("on", 1.0), (" a ", 1.1), ("hill", 0.55),
             (", sun, ", 1.1), ("sky", 1.4641000000000006), (".", 1.1)],
        ),
        ("", [("", 1.0)]),
        ("[a]", [("a", 1 / 1.1)]),
        ("((a))", [("a", 1.1 * 1.1)]),
        ("(a : 1.5 )", [("a ", 1.5)]),
        ("(a:b)", [("a:b", 1.1)]),
        (r"a \\ b", [("a \\ b", 1.0)]),
        ("a) b]", [("a) b]", 1.0)]),
        ("(a:1.2.3)", [("a:1.2.3)", 1.1)]),  # A1111 crashes on this; we keep the text literal
    ],
)
def test_parse_prompt_attention(text, expected):
    parsed = parse_prompt_attention(text)
    assert [part for part, _ in parsed] == [part for part, _ in expected]
    assert [weight for _, weight in parsed] == pytest.approx([weight for _, weight in expected])


def test_break_is_a_marker_only_as_an_upper_case_word():
    assert parse_prompt_attention("a BREAK b") == [("a", 1.0), ("BREAK", -1.0), ("b", 1.0)]
    assert parse_prompt_attention("a break b, BREAKING") == [("a break b, BREAKING", 1.0)]


def test_comments_are_removed_to_the_end_of_the_line():
    assert strip_comments("# whole line\na cat # trailing\nred") == "\na cat \nred"
    assert strip_comments("no comment") == "no comment"


# --- extra networks --------------------------------------------------------------------------------------------


def test_extract_extra_networks():
    prompt = "a cat <lora:foo:0.8>, <lora:bar:1:0.5> <lyco:baz:te=0.7:unet=1>, <hypernet:h:1>"
    text, tags = extract_extra_networks(prompt)
    assert text == "a cat ,  , "
    assert tags == [
        ExtraNetworkTag("lora", "foo", ["0.8"]),
        ExtraNetworkTag("lora", "bar", ["1", "0.5"]),
        ExtraNetworkTag("lyco", "baz", [], {"te": "0.7", "unet": "1"}),
        ExtraNetworkTag("hypernet", "h", ["1"]),
    ]


def test_commented_out_tags_do_nothing():
    text, tags = extract_extra_networks("a cat\n# <lora:foo:1>\nred <lora:bar:1> # <lora:baz:1>")
    assert [tag.name for tag in tags] == ["bar"]
    assert "lora" not in text


# --- chunks and the token counter ------------------------------------------------------------------------------


def test_short_prompt_is_one_padded_chunk(tokenizer):
    chunks, count = tokenize_prompt("a photo of an astronaut riding a horse", tokenizer)
    assert count == 8 and len(chunks) == 1
    assert chunks[0].tokens[:10] == [BOS, 320, 1125, 539, 550, 18376, 6765, 320, 4558, EOS]
    assert chunks[0].tokens[10:] == [EOS] * 67 and chunks[0].multipliers == [1.0] * 77


def test_long_prompt_splits_into_chunks_of_75(tokenizer):
    chunks, count = tokenize_prompt(" ".join(["cat"] * 80), tokenizer)
    assert count == 80 and len(chunks) == 2
    assert all(len(chunk.tokens) == 77 and chunk.tokens[0] == BOS and chunk.tokens[-1] == EOS for chunk in chunks)
    assert chunks[0].tokens[1:76].count(EOS) == 0
    assert chunks[1].tokens[6:] == [EOS] * 71
    assert count_tokens(" ".join(["cat"] * 80), tokenizer) == (80, 150)


def test_comma_backtrack_moves_text_after_the_last_comma(tokenizer):
    prompt = " ".join(["cat"] * 60) + ", " + " ".join(["dog"] * 20)  # the comma is token 61
    chunks, _ = tokenize_prompt(prompt, tokenizer)
    assert chunks[0].tokens[61] == COMMA and chunks[0].tokens[62:] == [EOS] * 15
    assert chunks[1].tokens[1:21] == chunks[1].tokens[1:2] * 20  # all 20 "dog"s moved
    far_comma = " ".join(["cat"] * 50) + ", " + " ".join(["dog"] * 30)  # 25 tokens after it: no backtrack
    chunks, _ = tokenize_prompt(far_comma, tokenizer)
    assert EOS not in chunks[0].tokens[1:76]


def test_break_closes_the_chunk(tokenizer):
    chunks, count = tokenize_prompt("a cat BREAK a dog", tokenizer)
    assert len(chunks) == 2 and count == 77  # 75 for the closed chunk + 2
    assert chunks[0].tokens[:4] == [BOS, 320, 2368, EOS]
    assert chunks[1].tokens[:4] == [BOS, 320, 1929, EOS]
    assert count_tokens("a cat BREAK a dog", tokenizer) == (77, 150)


def test_weights_follow_their_tokens(tokenizer):
    chunks, _ = tokenize_prompt("a (red:1.5) [cat]", tokenizer)
    assert chunks[0].multipliers[:5] == pytest.approx([1.0, 1.0, 1.5, 1 / 1.1, 1.0])


def test_count_tokens_uses_the_longest_schedule_entry_and_ignores_tags(tokenizer):
    assert count_tokens("", tokenizer) == (0, 75)
    assert count_tokens("a [cat:very big red dog:5] <lora:x:1> # comment words", tokenizer) == (5, 75)
    assert count_tokens("(a cat:1.3)", tokenizer) == count_tokens("a cat", tokenizer) == (2, 75)


# --- encoding ---------------------------------------------------------------------------------------------------


def test_sd1_single_chunk_equals_diffusers_encode_prompt(sd1):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=None, text_encoder=sd1.text_encoder, tokenizer=sd1.tokenizer, unet=None, scheduler=None,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    expected, expected_negative = pipe.encode_prompt("a red cat, sitting", "cpu", 1, True, "blurry")
    positive, negative = encode(sd1, "a red cat, sitting", "blurry")
    assert torch.equal(positive.embeds, expected) and torch.equal(negative.embeds, expected_negative)
    assert positive.pooled is None


def test_sd2_pads_with_the_open_clip_pad_token(open_clip_tokenizer, text_encoder):
    from diffusers import StableDiffusionPipeline

    sd2 = TextEncoderSet("sd2", open_clip_tokenizer, text_encoder)
    chunk = tokenize_prompt("a cat", open_clip_tokenizer)[0][0]
    assert encoder_input_ids(chunk, open_clip_tokenizer)[:6] == [BOS, 320, 2368, EOS, 0, 0]
    pipe = StableDiffusionPipeline(
        vae=None, text_encoder=text_encoder, tokenizer=open_clip_tokenizer, unet=None, scheduler=None,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    expected, _ = pipe.encode_prompt("a cat", "cpu", 1, False)
    assert torch.equal(encode(sd2, "a cat")[0].embeds, expected)


def test_sdxl_single_chunk_equals_diffusers_encode_prompt(sdxl):
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline(
        vae=None, text_encoder=sdxl.text_encoder, text_encoder_2=sdxl.text_encoder_2, tokenizer=sdxl.tokenizer,
        tokenizer_2=sdxl.tokenizer_2, unet=None, scheduler=None, add_watermarker=False,
    )
    embeds, negative_embeds, pooled, negative_pooled = pipe.encode_prompt(
        "a red cat, sitting", device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True,
        negative_prompt="blurry",
    )
    positive, negative = encode(sdxl, "a red cat, sitting", "blurry")
    assert positive.embeds.shape == (1, 77, 32 + 48) and positive.pooled.shape == (1, 16)
    assert torch.equal(positive.embeds, embeds) and torch.equal(positive.pooled, pooled)
    assert torch.equal(negative.embeds, negative_embeds) and torch.equal(negative.pooled, negative_pooled)


def test_sdxl_empty_negative_is_zeroed(sdxl, sd1):
    positive, negative = encode(sdxl, "a cat", "")
    assert not negative.embeds.any() and not negative.pooled.any()
    assert positive.embeds.any()
    assert encode(sdxl, "a cat", " # only a comment")[1].embeds.any()  # " " is not empty
    assert encode(sd1, "a cat", "")[1].embeds.any()  # only SDXL zeroes


def test_sdxl_pooled_comes_from_the_first_chunk(sdxl):
    short = encode(sdxl, "a cat")[0]
    long = encode(sdxl, "a cat BREAK a dog")[0]
    assert long.embeds.shape == (1, 154, 80)
    assert torch.equal(long.pooled, short.pooled)


def test_sdxl_refiner_uses_only_the_second_encoder(open_clip_tokenizer, text_encoder_2, sdxl):
    refiner = TextEncoderSet("sdxl", None, None, open_clip_tokenizer, text_encoder_2)
    positive, _ = encode(refiner, "a cat")
    assert positive.embeds.shape == (1, 77, 48)
    assert torch.equal(positive.embeds, encode(sdxl, "a cat")[0].embeds[..., 32:])


def test_weight_one_is_exactly_unweighted(sd1, sdxl):
    for encoders in (sd1, sdxl):
        assert torch.equal(encode(encoders, "a (cat:1.0)")[0].embeds, encode(encoders, "a cat")[0].embeds)


def test_weights_scale_only_the_weighted_tokens(sd1):
    plain = encode(sd1, "a red cat")[0].embeds
    no_norm = encode(sd1, "a (red:1.5) cat", emphasis="No norm")[0].embeds
    scale = torch.ones(77)
    scale[2] = 1.5  # BOS, "a", "red", …
    torch.testing.assert_close(no_norm, plain * scale.reshape(1, -1, 1))
    original = encode(sd1, "a (red:1.5) cat")[0].embeds
    torch.testing.assert_close(original, no_norm * (plain.mean() / no_norm.mean()))
    torch.testing.assert_close(original.mean(), plain.mean())
    assert torch.equal(encode(sd1, "a (red:1.5) cat", emphasis="Ignore")[0].embeds, plain)
    assert not torch.equal(encode(sd1, "a (red) cat", emphasis="None")[0].embeds, encode(sd1, "a red cat")[0].embeds)


def test_clip_skip(sd1, sdxl):
    tokens = torch.tensor([tokenize_prompt("a cat", sd1.tokenizer)[0][0].tokens])
    hidden = sd1.text_encoder(tokens, output_hidden_states=True).hidden_states
    skipped = encode(sd1, "a cat", clip_skip=2)[0].embeds
    assert not torch.equal(skipped, encode(sd1, "a cat")[0].embeds)
    torch.testing.assert_close(skipped, sd1.text_encoder.final_layer_norm(hidden[-2]), rtol=0, atol=0)
    xl_default = encode(sdxl, "a cat")[0].embeds
    xl_skipped = encode(sdxl, "a cat", clip_skip=2)[0].embeds
    assert torch.equal(xl_default[..., :32], hidden[-2])
    assert torch.equal(xl_skipped[..., :32], hidden[-3])
    with pytest.raises(ValueError, match="clip skip"):
        encode(sd1, "a cat", clip_skip=3)


def test_positive_and_negative_get_the_same_length(sd1):
    long_prompt = " ".join(["cat"] * 100)
    positive, negative = encode(sd1, long_prompt, "blurry")
    assert positive.embeds.shape == negative.embeds.shape == (1, 154, 32)
    empty = encode(sd1, "")[0].embeds
    assert torch.equal(negative.embeds[:, 77:], empty)
    assert torch.equal(negative.embeds[:, :77], encode(sd1, "blurry")[0].embeds)


def test_editing_schedule_change_steps(sd1):
    schedule = PromptEncoder(sd1).schedule("a [cat:dog:0.5]", "", 20)
    assert schedule.steps == 20 and schedule.change_steps == [11]
    cat, dog = encode(sd1, "a cat")[0].embeds, encode(sd1, "a dog")[0].embeds
    assert torch.equal(schedule.at(0)[0].embeds, cat) and torch.equal(schedule.at(10)[0].embeds, cat)
    assert torch.equal(schedule.at(11)[0].embeds, dog) and torch.equal(schedule.at(19)[0].embeds, dog)
    assert PromptEncoder(sd1).schedule("a cat", "", 20).change_steps == []


def test_alternation_change_steps_and_negative_editing(sd1):
    schedule = PromptEncoder(sd1).schedule("a [cat|dog]", "", 20)
    assert schedule.change_steps == list(range(2, 20))  # A1111: step 0 and 1 both use entry 1
    negative_schedule = PromptEncoder(sd1).schedule("a cat", "[blurry:ugly:5]", 20)
    assert negative_schedule.change_steps == [6]
    assert torch.equal(negative_schedule.at(6)[1].embeds, encode(sd1, "ugly")[0].embeds)


def test_every_distinct_text_is_encoded_once_and_cached(tokenizer):
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(tiny_clip_config(32)).eval()
    calls = count_calls(text_encoder)
    prompt_encoder = PromptEncoder(TextEncoderSet("sd1", tokenizer, text_encoder))
    first = prompt_encoder.schedule("a [cat|dog]", "blurry", 20)
    assert calls[0] == 3  # "a cat", "a dog", "blurry"
    second = prompt_encoder.schedule("a [cat|dog]", "blurry", 20)
    assert calls[0] == 3
    assert torch.equal(first.at(5)[0].embeds, second.at(5)[0].embeds)
    prompt_encoder.schedule("a [cat|dog]", "blurry", 20, weights_key="lora-a")  # TE weights changed
    assert calls[0] == 6
    prompt_encoder.clear_cache()
    prompt_encoder.schedule("a cat", "blurry", 20)
    assert calls[0] == 8


def test_cache_is_bounded(tokenizer, text_encoder):
    prompt_encoder = PromptEncoder(TextEncoderSet("sd1", tokenizer, text_encoder), cache_size=2)
    for word in ("cat", "dog", "cow", "pig"):
        prompt_encoder.schedule(word, "", 5)
    assert len(prompt_encoder._cache) == 2


def test_extra_network_tags_are_stripped_from_the_positive_only(sd1):
    positive, negative = encode(sd1, "a cat <lora:foo:1>", "a cat <lora:foo:1>")
    assert torch.equal(positive.embeds, encode(sd1, "a cat")[0].embeds)
    assert not torch.equal(negative.embeds, positive.embeds)


def test_outputs_are_not_the_cached_tensors(sd1):
    prompt_encoder = PromptEncoder(sd1)
    first = prompt_encoder.schedule("a cat", "", 5).at(0)[0].embeds
    first.zero_()
    assert prompt_encoder.schedule("a cat", "", 5).at(0)[0].embeds.any()


def test_change_steps_follow_text_changes_not_entries(sd1):
    schedule = PromptEncoder(sd1).schedule("[fe|||]male", "", 10)
    assert schedule.change_steps == [2, 5, 6, 9]  # entries 1..10 → female male male male female male …
    assert schedule.at(3)[0] is schedule.at(4)[0]  # one Conditioning per distinct text
