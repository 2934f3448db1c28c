"""Textual inversion: embedding files in every supported format, their use in prompts (vectors substituted exactly,
emphasis, negative prompt, token counts, chunks), skipped embeddings, TI hashes, the API, and refused pickles."""
from __future__ import annotations

import copy
import hashlib
import os
import pickle
from pathlib import Path

import httpx
import pytest
import torch
from safetensors.torch import save_file

from modules.engine.model import EngineModel
from modules.engine.prompt_chunks import CHUNK_LENGTH, count_tokens, tokenize_prompt
from modules.engine.prompts import PromptEncoder
from modules.engine.request import GenerationRequest
from modules.models.embedding_files import EmbeddingRegistry
from modules.ui.txt2img_form import token_counter_text
from tests.fixtures.tiny_models import (
    SD15_TEXT_WIDTH, SDXL_TEXT_WIDTHS, tiny_sd15_components, tiny_sdxl_components, write_tiny_sd15_single_file,
)
from tests.test_api import serve_app

API = "/sdapi/v1"
CLIP_L_WIDTH, CLIP_G_WIDTH = SDXL_TEXT_WIDTHS


def vectors(count: int, width: int, seed: int) -> torch.Tensor:
    return torch.randn(count, width, generator=torch.Generator().manual_seed(seed))


def a1111_pt(path: Path, tensor: torch.Tensor) -> Path:
    """What A1111's textual inversion training saves."""
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": tensor.clone().requires_grad_()},
                "name": path.stem, "step": 1500, "sd_checkpoint": "0123456789", "sd_checkpoint_name": "base"}, path)
    return path


def sdxl_safetensors(path: Path, clip_l: torch.Tensor, clip_g: torch.Tensor) -> Path:
    save_file({"clip_l": clip_l.contiguous(), "clip_g": clip_g.contiguous()}, str(path))
    return path


def engine_model(components) -> EngineModel:
    return EngineModel(components, {"model_name": "tiny"}, native_size=components.native_size)


@pytest.fixture(scope="module")
def sd15() -> EngineModel:
    return engine_model(tiny_sd15_components(seed=3))


@pytest.fixture(scope="module")
def sdxl() -> EngineModel:
    return engine_model(tiny_sdxl_components(seed=4))


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """One embedding per format; SD1 ones as wide as the tiny SD1.5 text encoder."""
    root = tmp_path_factory.mktemp("embeddings")
    (root / "sub").mkdir()
    a1111_pt(root / "myemb.pt", vectors(2, SD15_TEXT_WIDTH, 1))
    torch.save({"string_to_param": torch.nn.ParameterDict({"*": torch.nn.Parameter(vectors(1, SD15_TEXT_WIDTH, 2))}),
                "step": 7}, root / "oldstyle.pt")  # original TI repo / old torch: a pickled ParameterDict
    torch.save({"<concept>": vectors(1, SD15_TEXT_WIDTH, 3)[0]}, root / "sub" / "concept.bin")  # diffusers, [w]
    save_file({"emb_params": vectors(3, SD15_TEXT_WIDTH, 4)}, str(root / "threevec.safetensors"))
    sdxl_safetensors(root / "xlemb.safetensors", vectors(2, CLIP_L_WIDTH, 5), vectors(2, CLIP_G_WIDTH, 6))
    save_file({"emb_params": vectors(1, 24, 7)}, str(root / "wrongwidth.safetensors"))
    (root / "README.md").write_text("not an embedding")
    return root


@pytest.fixture(scope="module")
def registry(folder) -> EmbeddingRegistry:
    return EmbeddingRegistry(folder)


def reference_encoder(model: EngineModel, rows: dict[str, list[tuple[str, torch.Tensor]]]) -> PromptEncoder:
    """A copy of the model's encoders whose token-embedding rows for some words hold given vectors: what an
    embedding must equal (rows: encoder attribute → [(word, vector)])."""
    encoders = copy.deepcopy(model.prompt_encoder.encoders)
    tokenizer = encoders.chunk_tokenizer
    for attribute, words in rows.items():
        weight = getattr(encoders, attribute).get_input_embeddings().weight
        with torch.no_grad():
            for word, vector in words:
                weight[tokenizer.convert_tokens_to_ids(f"{word}</w>")] = vector
    return PromptEncoder(encoders)


def encode(encoder: PromptEncoder, prompt: str, negative: str = "", **options):
    return encoder.schedule(prompt, negative, 20, **options).at(0)


def with_embeddings(model: EngineModel, registry: EmbeddingRegistry) -> PromptEncoder:
    encoder = PromptEncoder(model.prompt_encoder.encoders)
    encoder.set_embeddings(registry.lookup_for(model))
    return encoder


# --- files ------------------------------------------------------------------------------------------------------


def test_every_format_is_read_with_name_vectors_metadata_and_hash(registry, folder):
    entries = {entry.name: entry for entry in registry.entries}
    assert set(entries) == {"myemb", "oldstyle", "concept", "threevec", "xlemb", "wrongwidth"}
    myemb = entries["myemb"]
    assert (myemb.count, myemb.shape, myemb.step, myemb.sd_checkpoint, myemb.sd_checkpoint_name) == \
        (2, SD15_TEXT_WIDTH, 1500, "0123456789", "base")
    assert torch.equal(myemb.vectors["*"], vectors(2, SD15_TEXT_WIDTH, 1))
    assert torch.equal(entries["oldstyle"].vectors["*"], vectors(1, SD15_TEXT_WIDTH, 2))
    assert entries["oldstyle"].step == 7
    assert entries["concept"].vectors["*"].shape == (1, SD15_TEXT_WIDTH)
    assert entries["threevec"].count == 3
    assert entries["xlemb"].widths == {"clip_l": CLIP_L_WIDTH, "clip_g": CLIP_G_WIDTH}
    assert entries["xlemb"].shape == CLIP_L_WIDTH + CLIP_G_WIDTH  # A1111 sums the widths
    assert myemb.short_hash() == hashlib.sha256((folder / "myemb.pt").read_bytes()).hexdigest()[:12]
    assert registry.errors == {}


def test_fit_per_model_and_skip_reasons(registry, sd15, sdxl):
    assert set(registry.loaded_for(sd15)) == {"myemb", "oldstyle", "concept", "threevec"}
    skipped = registry.skipped_for(sd15)
    assert set(skipped) == {"xlemb", "wrongwidth"}
    assert "width 24" in skipped["wrongwidth"] and f"width {SD15_TEXT_WIDTH}" in skipped["wrongwidth"]
    assert "SDXL" in skipped["xlemb"]
    assert set(registry.loaded_for(sdxl)) == {"xlemb"}
    assert "clip_l" in registry.skipped_for(sdxl)["myemb"]


# --- use in prompts -----------------------------------------------------------------------------------------------


def test_sd1_embedding_equals_its_vectors_put_in_place_of_tokens(registry, sd15):
    """"a myemb house" ≡ "a cat dog house" with the rows of "cat" and "dog" holding the two vectors —
    also under emphasis and in the negative prompt."""
    two = vectors(2, SD15_TEXT_WIDTH, 1)
    reference = reference_encoder(sd15, {"text_encoder": [("cat", two[0]), ("dog", two[1])]})
    encoder = with_embeddings(sd15, registry)
    plain = PromptEncoder(sd15.prompt_encoder.encoders)
    for prompt, substituted in (("a myemb house", "a cat dog house"), ("a (myemb:1.3) house", "a (cat dog:1.3) house")):
        cond, _ = encode(encoder, prompt)
        assert torch.equal(cond.embeds, encode(reference, substituted)[0].embeds), prompt
        assert not torch.allclose(cond.embeds, encode(plain, prompt)[0].embeds)
    _, uncond = encode(encoder, "a house", "myemb, blurry")
    assert torch.equal(uncond.embeds, encode(reference, "a house", "cat dog, blurry")[1].embeds)


def test_sdxl_embedding_puts_clip_l_and_clip_g_vectors_into_their_encoders(registry, sdxl):
    clip_l, clip_g = vectors(2, CLIP_L_WIDTH, 5), vectors(2, CLIP_G_WIDTH, 6)
    reference = reference_encoder(sdxl, {"text_encoder": [("cat", clip_l[0]), ("dog", clip_l[1])],
                                         "text_encoder_2": [("cat", clip_g[0]), ("dog", clip_g[1])]})
    cond, uncond = encode(with_embeddings(sdxl, registry), "a xlemb house", "xlemb")
    expected, expected_negative = encode(reference, "a cat dog house", "cat dog")
    assert torch.equal(cond.embeds, expected.embeds) and torch.equal(cond.pooled, expected.pooled)
    assert torch.equal(uncond.embeds, expected_negative.embeds)


def test_skipped_or_mid_word_names_stay_plain_text(registry, sd15):
    encoder, plain = with_embeddings(sd15, registry), PromptEncoder(sd15.prompt_encoder.encoders)
    for prompt in ("a wrongwidth house", "a xlemb house", "a xmyemb house"):  # wrong width, SDXL, not a whole word
        assert torch.equal(encode(encoder, prompt)[0].embeds, encode(plain, prompt)[0].embeds), prompt


def test_token_count_counts_vectors_and_an_embedding_never_splits_across_chunks(registry, sd15):
    tokenizer, lookup = sd15.prompt_encoder.encoders.chunk_tokenizer, registry.lookup_for(sd15)
    assert count_tokens("a myemb house", tokenizer, embeddings=lookup) == (4, 75)  # 1 + 2 vectors + 1
    assert count_tokens("oldstyle", tokenizer, embeddings=lookup) == (1, 75)
    assert count_tokens("oldstyle", tokenizer) == (2, 75)  # "old" "style" as plain text
    assert count_tokens("a concept", tokenizer, embeddings=lookup)[0] == 2
    # 74 words + a 3-vector embedding: it does not fit the first chunk, so it opens the second
    chunks, used = tokenize_prompt("cat " * 74 + "threevec", tokenizer, embeddings=lookup)
    assert len(chunks) == 2 and used == CHUNK_LENGTH + 3
    assert [position for position, _ in chunks[1].fixes] == [1] and chunks[0].tokens[75] == tokenizer.eos_token_id


def test_comma_backtrack_carries_an_embedding_into_the_next_chunk(registry, sd15):
    tokenizer, lookup = sd15.prompt_encoder.encoders.chunk_tokenizer, registry.lookup_for(sd15)
    chunks, _ = tokenize_prompt("cat " * 70 + ", myemb cat cat cat", tokenizer, embeddings=lookup)
    assert chunks[0].fixes == []
    assert [(position, embedding.name) for position, embedding in chunks[1].fixes] == [(1, "myemb")]


def test_cache_keys_on_the_embedding_content(tmp_path, sd15):
    path = a1111_pt(tmp_path / "swap.pt", vectors(1, SD15_TEXT_WIDTH, 10))
    registry = EmbeddingRegistry(tmp_path)
    encoder = PromptEncoder(sd15.prompt_encoder.encoders)
    encoder.set_embeddings(registry.lookup_for(sd15))
    before = encode(encoder, "a swap")[0].embeds
    a1111_pt(path, vectors(1, SD15_TEXT_WIDTH, 11))
    registry.refresh()
    encoder.set_embeddings(registry.lookup_for(sd15))
    assert not torch.equal(encode(encoder, "a swap")[0].embeds, before)


# --- infotext -----------------------------------------------------------------------------------------------------


def test_ti_hashes_list_embeddings_used_in_either_prompt_once(registry, sd15):
    request = GenerationRequest(prompt="a myemb house, [cat:threevec:5] <lora:x:1>", negative_prompt="oldstyle, myemb",
                                steps=10)
    prepared = registry.prepare(sd15, request)
    hashes = {name: registry.find(name).short_hash() for name in ("myemb", "threevec", "oldstyle")}
    assert prepared.extra_params["TI hashes"] == ", ".join(f"{name}: {hashes[name]}" for name in hashes)
    assert sd15.prompt_encoder.embeddings is registry.lookup_for(sd15)
    assert "TI hashes" not in registry.prepare(sd15, GenerationRequest(prompt="a wrongwidth house")).extra_params


# --- security -----------------------------------------------------------------------------------------------------


class _Exploit:
    def __init__(self, canary: Path) -> None:
        self.canary = canary

    def __reduce__(self):
        return os.system, (f"touch {self.canary}",)


class _NotATensor:
    pass


def test_malicious_or_object_pickles_are_refused_listed_and_never_run(tmp_path, sd15):
    canary = tmp_path / "canary"
    torch.save({"string_to_param": {"*": _Exploit(canary)}}, tmp_path / "evil.pt")
    (tmp_path / "legacy.bin").write_bytes(pickle.dumps({"string_to_param": {"*": _Exploit(canary)}}))
    torch.save({"string_to_param": {"*": _NotATensor()}}, tmp_path / "object.pt")
    torch.save({"a": torch.zeros(2, 4), "b": torch.zeros(2, 4)}, tmp_path / "lora_like.pt")
    a1111_pt(tmp_path / "good.pt", vectors(1, SD15_TEXT_WIDTH, 1))
    registry = EmbeddingRegistry(tmp_path)
    assert [entry.name for entry in registry.entries] == ["good"]
    skipped = registry.skipped_for(sd15)
    assert set(skipped) == {"evil", "legacy", "object", "lora_like"}
    assert all("refused" in skipped[name] for name in ("evil", "legacy", "object"))
    assert "not a textual inversion embedding" in skipped["lora_like"]
    assert not canary.exists()


# --- app, API and token counter -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("webui")
    checkpoints = data / "models" / "Stable-diffusion"
    checkpoints.mkdir(parents=True)
    write_tiny_sd15_single_file(checkpoints / "tiny.safetensors", seed=1)
    embeddings = data / "embeddings"
    embeddings.mkdir()
    a1111_pt(embeddings / "myemb.pt", vectors(2, SD15_TEXT_WIDTH, 1))
    save_file({"emb_params": vectors(1, 24, 7)}, str(embeddings / "wrongwidth.safetensors"))
    app, handle = serve_app(data)
    with httpx.Client(base_url=handle.url, timeout=120) as client:
        yield client, app, embeddings
    handle.stop()
    app.jobs.shutdown()


def test_embeddings_route_lists_loaded_and_skipped_for_the_current_model_and_refresh_rescans(server):
    client, _, embeddings = server
    body = client.get(f"{API}/embeddings").json()
    assert body["loaded"] == {"myemb": {"step": 1500, "sd_checkpoint": "0123456789", "sd_checkpoint_name": "base",
                                        "shape": SD15_TEXT_WIDTH, "vectors": 2}}
    assert body["skipped"]["wrongwidth"]["shape"] == 24 and "width 24" in body["skipped"]["wrongwidth"]["reason"]
    save_file({"emb_params": vectors(3, SD15_TEXT_WIDTH, 8)}, str(embeddings / "added.safetensors"))
    assert "added" not in client.get(f"{API}/embeddings").json()["loaded"]
    assert client.post(f"{API}/refresh-embeddings").status_code == 200
    assert client.get(f"{API}/embeddings").json()["loaded"]["added"]["vectors"] == 3


def test_txt2img_infotext_has_ti_hashes_and_the_counter_counts_vectors(server):
    client, app, embeddings = server
    response = client.post(f"{API}/txt2img", json={"prompt": "a myemb house", "negative_prompt": "wrongwidth",
                                                   "steps": 2, "width": 64, "height": 64, "seed": 1})
    assert response.status_code == 200, response.text
    infotext = response.json()["info"]
    short_hash = hashlib.sha256((embeddings / "myemb.pt").read_bytes()).hexdigest()[:12]
    assert f'TI hashes: \\"myemb: {short_hash}\\"' in infotext  # JSON string inside the JSON `info`
    assert token_counter_text(app, "a myemb house, myemb", 20) == "7/75"
