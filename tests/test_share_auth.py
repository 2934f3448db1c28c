"""--share without internet (a clear message; the local server keeps serving), --gradio-auth / --api-auth, and the
start-up warning when the server is exposed without a password."""
from __future__ import annotations

import logging

import httpx
import pytest

from modules.app import create_app
from modules.options import LaunchOptions, parse_options
from modules.server import build_server, exposure_warnings, open_share_link, start, start_server

API = "/sdapi/v1"


def offline_tunnel(port: int) -> str:
    """What gradio's tunnel does without internet: the Gradio API server cannot be reached."""
    try:
        raise OSError("[Errno -3] Temporary failure in name resolution")
    except OSError as error:
        raise RuntimeError("Could not get share link from Gradio API Server.") from error


@pytest.mark.parametrize("flags, count", [
    ({}, 0),
    ({"listen": True}, 2),
    ({"share": True}, 2),
    ({"listen": True, "nowebui": True}, 1),
    ({"listen": True, "gradio_auth": "a:b"}, 1),
    ({"listen": True, "gradio_auth": "a:b", "api_auth": "c:d"}, 0),
])
def test_exposure_without_a_password_is_warned_about(flags, count):
    warnings = exposure_warnings(LaunchOptions(**flags))
    assert len(warnings) == count
    assert all("without a password" in warning for warning in warnings)


def test_flags_parse():
    options = parse_options(["--share", "--listen", "--gradio-auth", "u:p", "--api-auth", "a:b",
                             "--enable-insecure-extension-access"])
    assert options.share and options.listen and options.host == "0.0.0.0"
    assert options.gradio_auth == "u:p" and options.api_auth == "a:b" and options.enable_insecure_extension_access


def test_a1111s_api_flag_is_accepted_and_flags_are_never_abbreviated(capsys):
    assert parse_options(["--api"]).api  # webuiapi's instructions start A1111 with --api; our API is always on
    assert parse_options(["--api", "--api-auth", "a:b"]).api_auth == "a:b"
    with pytest.raises(SystemExit):
        parse_options(["--api-a", "a:b"])
    assert "unrecognized arguments: --api-a" in capsys.readouterr().err


def test_share_offline_says_so_and_the_local_server_keeps_running(tmp_path, capsys, caplog):
    app = create_app(LaunchOptions(data_dir=str(tmp_path), nowebui=True, device="cpu", share=True, port=0),
                     load_model=False)
    caplog.set_level(logging.WARNING, logger="modules.server")
    handle = start(app, tunnel=offline_tunnel, log_level="warning")
    try:
        handle.share_thread.join(10)
        printed = capsys.readouterr().out
        assert "Running on local URL:" in printed
        assert "--share needs an internet connection" in printed and "keeps running locally" in printed
        assert "Temporary failure in name resolution" in printed  # the cause, not gradio's generic wrapper
        assert any("SECURITY" in record.message and "share link" in record.message for record in caplog.records)
        assert handle.thread.is_alive()
        with httpx.Client(base_url=handle.url, timeout=30) as client:
            assert client.get(f"{API}/sd-models").status_code == 200
    finally:
        handle.stop()
        app.jobs.shutdown()


def test_a_working_tunnel_prints_the_public_url(capsys):
    assert open_share_link(1234, tunnel=lambda port: f"http://abc.gradio.live:{port}") == "https://abc.gradio.live:1234"
    assert "Running on public URL: https://abc.gradio.live:1234" in capsys.readouterr().out


def test_auth_protects_the_api_and_the_ui(tmp_path):
    """--api-auth: HTTP Basic on /sdapi; --gradio-auth: Gradio's login in front of the UI (its config and API)."""
    app = create_app(LaunchOptions(data_dir=str(tmp_path), device="cpu", gradio_auth="alice:ui-secret",
                                   api_auth="bob:api-secret"), load_model=False)
    handle = start_server(build_server(app), "127.0.0.1", 0, log_level="warning")
    try:
        with httpx.Client(base_url=handle.url, timeout=60) as client:
            denied = client.get(f"{API}/sd-models")
            assert denied.status_code == 401 and denied.headers["www-authenticate"] == "Basic"
            assert client.get(f"{API}/sd-models", auth=("bob", "wrong")).status_code == 401
            assert client.get(f"{API}/sd-models", auth=("alice", "ui-secret")).status_code == 401
            assert client.get(f"{API}/sd-models", auth=("bob", "api-secret")).status_code == 200

            assert client.get("/config").status_code == 401  # the UI's definition needs a login
            assert client.get("/gradio_api/info").status_code == 401
            assert client.post("/login", data={"username": "alice", "password": "nope"}).status_code == 400
            assert client.post("/login", data={"username": "alice", "password": "ui-secret"}).status_code == 200
            assert client.get("/config").status_code == 200  # the login cookie opens the UI
    finally:
        handle.stop()
        app.jobs.shutdown()
