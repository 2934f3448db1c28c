"""Model downloads against a local HTTP server (started here, in a thread): full, resumed, restarted, verified,
refused names, offline host, Hugging Face links, the models/ folder chosen and the registry refreshed."""
from __future__ import annotations

import hashlib
import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from safetensors.torch import save_file

from modules.app import create_app
from modules.model_actions import download_model
from modules.models.download import (
    DownloadCancelled, DownloadError, DownloadProgress, OfflineError, download_file,
)
from modules.models.download_names import (
    file_name_from_disposition, file_name_from_url, guess_kind, huggingface_file, normalize_url, sanitize_file_name,
)
from modules.options import parse_options
from tests.fixtures.tiny_models import write_tiny_sd15_single_file

PAYLOAD = bytes(range(256)) * 4096 * 3  # 3 MiB: several 1 MiB chunks


@dataclass
class Served:
    """What the test server serves and how it behaves; it records the Range headers it received."""

    files: dict[str, bytes] = field(default_factory=dict)
    ranges: bool = True
    cut_after: int | None = None  # send only this many body bytes once, then drop the connection
    disposition: dict[str, str] = field(default_factory=dict)
    received_ranges: list[str | None] = field(default_factory=list)


def make_handler(served: Served) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep test output quiet
            pass

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path.startswith("/redirect/"):
                self.send_response(302)
                self.send_header("Location", path.removeprefix("/redirect"))
                self.end_headers()
                return
            if path not in served.files:
                self.send_error(404)
                return
            body, status, start = served.files[path], 200, 0
            requested = self.headers.get("Range")
            served.received_ranges.append(requested)
            if requested and served.ranges:
                start = int(re.fullmatch(r"bytes=(\d+)-", requested)[1])
                if start >= len(body):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(body)}")
                    self.end_headers()
                    return
                status = 206
            self.send_response(status)
            self.send_header("Content-Length", str(len(body) - start))
            self.send_header("ETag", '"v1"')
            if served.ranges:
                self.send_header("Accept-Ranges", "bytes")
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            if path in served.disposition:
                self.send_header("Content-Disposition", f'attachment; filename="{served.disposition[path]}"')
            self.end_headers()
            chunk = body[start:]
            if served.cut_after is not None:
                chunk, served.cut_after = chunk[:served.cut_after], None
            self.wfile.write(chunk)

    return Handler


@pytest.fixture
def server():
    served = Served()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(served))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    served.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield served
    httpd.shutdown()
    httpd.server_close()


def test_full_download_reports_progress_and_hash(server, tmp_path):
    server.files["/files/model.safetensors"] = PAYLOAD
    seen: list[DownloadProgress] = []
    result = download_file(f"{server.base}/files/model.safetensors", tmp_path, on_progress=seen.append)
    assert result.path == (tmp_path / "model.safetensors").resolve()
    assert result.path.read_bytes() == PAYLOAD and result.size == len(PAYLOAD)
    assert result.sha256 == hashlib.sha256(PAYLOAD).hexdigest() and not result.resumed
    assert seen[-1].downloaded == seen[-1].total == len(PAYLOAD) and seen[-1].fraction == 1.0
    assert seen[-1].bytes_per_second > 0
    assert not list(tmp_path.glob("*.part*"))  # moved into place, sidecar removed
    with pytest.raises(DownloadError, match="already exists"):  # never overwrites
        download_file(f"{server.base}/files/model.safetensors", tmp_path)


def test_interrupted_download_resumes_with_a_range_request(server, tmp_path):
    server.files["/m.safetensors"] = PAYLOAD
    server.cut_after = 1_200_000
    with pytest.raises(DownloadError, match="press Download again to resume"):
        download_file(f"{server.base}/m.safetensors", tmp_path)
    part = tmp_path / "m.safetensors.part"
    assert part.stat().st_size == 1_200_000
    result = download_file(f"{server.base}/m.safetensors", tmp_path, sha256=hashlib.sha256(PAYLOAD).hexdigest())
    assert server.received_ranges[-1] == "bytes=1200000-"
    assert result.resumed and result.path.read_bytes() == PAYLOAD and not part.exists()


def test_server_without_range_support_restarts_cleanly(server, tmp_path):
    server.files["/m.safetensors"] = PAYLOAD
    server.ranges = False
    server.cut_after = 1_000_000
    with pytest.raises(DownloadError):
        download_file(f"{server.base}/m.safetensors", tmp_path)
    result = download_file(f"{server.base}/m.safetensors", tmp_path)
    assert server.received_ranges[-1] == "bytes=1000000-"  # asked, but got the whole file (200)
    assert not result.resumed and result.path.read_bytes() == PAYLOAD


def test_part_from_another_url_is_not_resumed(server, tmp_path):
    server.files["/m.safetensors"] = PAYLOAD
    (tmp_path / "m.safetensors.part").write_bytes(b"x" * 1000)  # no sidecar: origin unknown
    result = download_file(f"{server.base}/m.safetensors", tmp_path)
    assert server.received_ranges[-1] is None and result.path.read_bytes() == PAYLOAD


def test_complete_part_is_finished_after_416(server, tmp_path):
    server.files["/m.safetensors"] = PAYLOAD
    server.cut_after = len(PAYLOAD) - 1
    with pytest.raises(DownloadError):
        download_file(f"{server.base}/m.safetensors", tmp_path)
    with open(tmp_path / "m.safetensors.part", "ab") as part:  # the last byte arrived somehow
        part.write(PAYLOAD[-1:])
    assert download_file(f"{server.base}/m.safetensors", tmp_path).path.read_bytes() == PAYLOAD


def test_sha256_mismatch_deletes_the_partial_file(server, tmp_path):
    server.files["/m.safetensors"] = PAYLOAD
    with pytest.raises(DownloadError, match="sha256 mismatch.*deleted"):
        download_file(f"{server.base}/m.safetensors", tmp_path, sha256="0" * 64)
    assert not list(tmp_path.iterdir())
    with pytest.raises(DownloadError, match="64 hexadecimal"):
        download_file(f"{server.base}/m.safetensors", tmp_path, sha256="abc")


def test_cancel_keeps_the_part_for_resuming(server, tmp_path):
    server.files["/m.safetensors"] = PAYLOAD
    cancel = threading.Event()

    def cancel_after_first_report(progress: DownloadProgress) -> None:
        cancel.set()

    with pytest.raises(DownloadCancelled, match="resume"):
        download_file(f"{server.base}/m.safetensors", tmp_path, on_progress=cancel_after_first_report, cancel=cancel)
    assert (tmp_path / "m.safetensors.part").is_file() and not (tmp_path / "m.safetensors").exists()


@pytest.mark.parametrize("name", ["../evil.safetensors", "a/b.safetensors", "..\\x.ckpt", "C:x.safetensors",
                                  "script.py", "model.safetensors.exe", ".hidden.safetensors", "nul.pt", "",
                                  "bad\x00.safetensors"])
def test_bad_names_and_extensions_are_refused(name):
    with pytest.raises(DownloadError):
        sanitize_file_name(name)


def test_bad_urls_and_names_refused_before_any_request(server, tmp_path):
    server.files["/run.sh"] = b"#!/bin/sh"
    with pytest.raises(DownloadError, match="only http"):
        download_file("file:///etc/passwd", tmp_path)
    with pytest.raises(DownloadError, match="not a model file"):
        download_file(f"{server.base}/files/x.safetensors", tmp_path, file_name="x.sh")
    with pytest.raises(DownloadError, match="does not say the file's name"):
        download_file(f"{server.base}/run.sh", tmp_path)
    with pytest.raises(DownloadError, match="not found"):
        download_file(f"{server.base}/missing.safetensors", tmp_path)
    assert sanitize_file_name("my model (v2).safetensors") == "my model (v2).safetensors"


def test_name_from_content_disposition_after_a_redirect(server, tmp_path):
    server.files["/api/download/7"] = PAYLOAD
    server.disposition["/api/download/7"] = "Served Name.safetensors"
    result = download_file(f"{server.base}/redirect/api/download/7", tmp_path)
    assert result.path.name == "Served Name.safetensors" and result.path.read_bytes() == PAYLOAD


def test_unreachable_host_is_a_clear_offline_error(tmp_path):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(OfflineError, match="cannot reach 127.0.0.1: this machine is offline or the host is blocked"):
        download_file(f"http://127.0.0.1:{port}/m.safetensors", tmp_path)
    assert not list(tmp_path.iterdir())


def test_hugging_face_links():
    url = "https://huggingface.co/stabilityai/sdxl-vae/resolve/main/sdxl_vae.safetensors?download=true"
    assert huggingface_file(url) == ("stabilityai/sdxl-vae", "main", "sdxl_vae.safetensors")
    assert file_name_from_url(url) == "sdxl_vae.safetensors"
    blob = normalize_url("https://huggingface.co/org/repo/blob/v1.0/sub/dir/My%20Model.safetensors")
    assert blob.path == "/org/repo/resolve/v1.0/sub/dir/My Model.safetensors"
    assert file_name_from_url(blob) == "My Model.safetensors"
    assert huggingface_file("https://example.com/org/repo/resolve/main/x.safetensors") is None
    assert file_name_from_disposition("attachment; filename*=UTF-8''a%20b.ckpt") == "a b.ckpt"


def test_auto_folder_guess_from_names():
    assert guess_kind("v1-5-pruned-emaonly.safetensors") == "checkpoint"
    assert guess_kind("add_detail_lora.safetensors") == "lora"
    assert guess_kind("vae-ft-mse-840000-ema-pruned.safetensors") == "vae"
    assert guess_kind("sdxl_vae.safetensors") == "vae"
    assert guess_kind("control_v11p_sd15_canny.pth") == "controlnet"
    assert guess_kind("4x-UltraSharp.pth") == "esrgan" and guess_kind("RealESRGAN_x4plus.pth") == "esrgan"
    assert guess_kind("EasyNegative.safetensors") == "embeddings" and guess_kind("style.pt") == "embeddings"
    assert guess_kind("sd_xl_base_1.0.safetensors") == "checkpoint"


@pytest.fixture
def app(tmp_path):
    application = create_app(parse_options(["--data-dir", str(tmp_path / "data")]), load_model=False)
    yield application
    application.jobs.shutdown()


def test_download_into_models_lists_the_checkpoint(server, app, tmp_path):
    checkpoint = write_tiny_sd15_single_file(tmp_path / "tiny.safetensors", seed=1)
    server.files["/org/repo/resolve/main/tiny.safetensors"] = checkpoint.read_bytes()
    url = f"{server.base}/org/repo/resolve/main/tiny.safetensors"
    result = download_model(app, url, "auto")
    assert result.kind == "checkpoint" and result.path.parent == app.paths.ckpt_dirs[0].resolve()
    assert [entry.name for entry in app.models.checkpoints] == ["tiny.safetensors"]
    assert app.models.checkpoints[0].sha256 == result.sha256


def test_auto_moves_a_file_by_what_it_holds_and_warns_about_pickles(server, app, tmp_path):
    vae = {"encoder.conv_in.weight": torch.zeros(2, 3, 3, 3), "decoder.conv_out.weight": torch.zeros(3, 2, 3, 3)}
    save_file(vae, str(tmp_path / "vae.safetensors"))
    server.files["/model.safetensors"] = (tmp_path / "vae.safetensors").read_bytes()  # name says checkpoint
    result = download_model(app, f"{server.base}/model.safetensors", "auto")
    assert result.kind == "vae" and result.path == (app.paths.vae_dir / "model.safetensors").resolve()
    assert [entry.name for entry in app.models.vaes] == ["model.safetensors"]
    server.files["/thing.ckpt"] = b"not opened"
    pickled = download_model(app, f"{server.base}/thing.ckpt", "lora")
    assert pickled.path.parent == app.paths.lora_dir.resolve() and "weights_only" in pickled.warnings[0]
    with pytest.raises(DownloadError, match="unknown model folder"):
        download_model(app, f"{server.base}/thing.ckpt", "scripts")


def test_downloads_refused_when_listening_without_permission(tmp_path):
    application = create_app(parse_options(["--data-dir", str(tmp_path), "--listen"]), load_model=False)
    try:
        with pytest.raises(DownloadError, match="--enable-insecure-extension-access"):
            download_model(application, "https://example.com/x.safetensors")
    finally:
        application.jobs.shutdown()


def test_each_folder_kind_refreshes_its_registry(server, app, tmp_path):
    lora = {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 8),
            "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(8, 4)}
    save_file(lora, str(tmp_path / "style.safetensors"))
    server.files["/style.safetensors"] = (tmp_path / "style.safetensors").read_bytes()
    result = download_model(app, f"{server.base}/style.safetensors", "auto")  # the name alone says checkpoint
    assert result.kind == "lora" and "style" in [entry.name for entry in app.loras.entries]
    server.files["/4x-Tiny.pth"] = b"weights"
    download_model(app, f"{server.base}/4x-Tiny.pth", "auto")
    assert "4x-Tiny" in app.upscalers.names
