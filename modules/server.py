"""The HTTP server: one FastAPI app with the /sdapi/v1 API, offline /docs and (unless --nowebui) the Gradio UI.

uvicorn runs on a background thread so the main thread can report the URL once the socket is bound, open a
--share tunnel, and stop the server cleanly on Ctrl+C / SIGTERM.
"""
from __future__ import annotations

import importlib
import importlib.util
import logging
import secrets
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import uvicorn
from fastapi import FastAPI

from modules.api.docs import add_offline_docs
from modules.api.extension_routes import install_extension_routes
from modules.api.routes import install_api
from modules.api.security import LOCAL_HOSTNAMES, MAX_BODY_BYTES, RequestGuard, parse_credentials
from modules.engine.infotext import VERSION

if TYPE_CHECKING:
    from modules.app import App
    from modules.options import LaunchOptions

log = logging.getLogger(__name__)

TITLE = "Stable Diffusion WebUI"
STARTUP_TIMEOUT_SECONDS = 60


class ServerStartError(RuntimeError):
    """uvicorn could not bind or start (port in use, permission)."""


def build_server(app: App) -> FastAPI:
    fastapi_app = FastAPI(title=TITLE, version=VERSION, docs_url=None, redoc_url=None)
    install_api(fastapi_app, app)
    add_offline_docs(fastapi_app)
    install_extension_routes(fastapi_app, app)  # after the core routes, never over them
    # Off the LAN the Host header must name this machine (DNS rebinding); a LAN or share address is not known ahead.
    exposed = app.options.listen or app.options.share
    fastapi_app.add_middleware(RequestGuard, max_body_bytes=MAX_BODY_BYTES,
                               allowed_hosts=None if exposed else LOCAL_HOSTNAMES)
    if not app.options.nowebui:
        mount_ui(fastapi_app, app)
    return fastapi_app


def mount_ui(fastapi_app: FastAPI, app: App) -> bool:
    """Mount modules.ui.build_ui(app) at '/'; a missing UI module leaves the API running alone."""
    build_ui = getattr(importlib.import_module("modules.ui"), "build_ui", None) \
        if importlib.util.find_spec("modules.ui") is not None else None
    if build_ui is None:
        log.warning("the web UI is not available (modules.ui.build_ui missing); serving the API only")
        return False
    import gradio

    blocks = build_ui(app)
    gradio.mount_gradio_app(
        fastapi_app, blocks, path="/", server_name=app.options.host, server_port=app.options.port,
        auth=parse_credentials(app.options.gradio_auth, "--gradio-auth") or None,
        allowed_paths=[str(app.paths.outputs_dir)], blocked_paths=[str(app.paths.config_file)],
        max_file_size=MAX_BODY_BYTES, css_paths=app.extensions.static_files(".css") or None,
        head=app.extensions.page_head() or None)  # extensions' add_static files
    return True


# local port → public share address (raises when no link can be made, e.g. offline)
TunnelOpener = Callable[[int], str]


@dataclass
class ServerHandle:
    server: uvicorn.Server
    thread: threading.Thread
    share_thread: threading.Thread | None = None  # opens the --share link beside the running server

    @property
    def port(self) -> int:
        return self.server.servers[0].sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        host = self.server.config.host
        return f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{self.port}"

    def wait(self) -> None:
        while self.thread.is_alive():
            self.thread.join(0.5)  # short joins keep the main thread responsive to Ctrl+C

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)


def start_server(fastapi_app: FastAPI, host: str, port: int, *, log_level: str = "info") -> ServerHandle:
    """Start uvicorn on a thread and return once it accepts connections (port 0 = any free port)."""
    config = uvicorn.Config(fastapi_app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="http-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise ServerStartError(f"the web server could not start on {host}:{port} (is the port already in use?)")
        time.sleep(0.05)
    return ServerHandle(server, thread)


def exposure_warnings(options: LaunchOptions) -> list[str]:
    """--listen / --share without auth: anyone who can reach the port can use the UI and the API."""
    if not (options.listen or options.share):
        return []
    where = "the network (--listen)" if options.listen else "a public share link (--share)"
    warnings = []
    if not options.gradio_auth and not options.nowebui:
        warnings.append(f"the web UI is reachable from {where} without a password; set --gradio-auth user:pass")
    if not options.api_auth:
        warnings.append(f"the API is reachable from {where} without a password; set --api-auth user:pass")
    return warnings


def gradio_tunnel(port: int) -> str:
    """Gradio's FRP share tunnel (needs the internet: the Gradio API server, the frpc binary, the share server)."""
    from gradio import networking

    return networking.setup_tunnel(local_host="127.0.0.1", local_port=port, share_token=secrets.token_urlsafe(32),
                                   share_server_address=None, share_server_tls_certificate=None)


def open_share_link(port: int, tunnel: TunnelOpener | None = None) -> str | None:
    """A share tunnel to the local port; without internet, say so clearly and keep serving locally."""
    try:
        address = (tunnel or gradio_tunnel)(port)
    except Exception as error:  # offline, DNS, frpc binary download, certificate write: all mean "no link"
        cause = error.__cause__ or error
        print(f"--share needs an internet connection: could not create a share link ({type(cause).__name__}: "
              f"{cause}). The server keeps running locally at http://127.0.0.1:{port}", flush=True)
        log.warning("no share link: %s: %s", type(cause).__name__, cause)
        return None
    url = urlunsplit(("https", *urlsplit(address)[1:]))  # the tunnel serves TLS (as gradio's own launch rewrites it)
    print(f"Running on public URL: {url}", flush=True)
    return url


def close_share_links() -> None:
    from gradio.tunneling import CURRENT_TUNNELS

    for tunnel in list(CURRENT_TUNNELS):
        tunnel.kill()


def start(app: App, *, tunnel: TunnelOpener | None = None, log_level: str = "info") -> ServerHandle:
    """Warn about exposure, start serving, print the URL, and open the share link (if asked) on its own thread:
    a share link that cannot be made never stops the local server."""
    options = app.options
    for warning in exposure_warnings(options):
        log.warning("SECURITY: %s", warning)
    handle = start_server(build_server(app), options.host, options.port, log_level=log_level)
    print(f"Running on local URL:  {handle.url}" + ("  (listening on all interfaces)" if options.listen else ""),
          flush=True)
    if options.share:
        handle.share_thread = threading.Thread(target=open_share_link, args=(handle.port, tunnel),
                                               name="share-tunnel", daemon=True)
        handle.share_thread.start()
    return handle


def serve(app: App) -> None:
    """Serve until Ctrl+C or SIGTERM; prints the URL once the socket is bound."""
    options = app.options
    handle = start(app)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: setattr(handle.server, "should_exit", True))
    try:
        handle.wait()
    except KeyboardInterrupt:
        print("Stopping...", flush=True)
        handle.stop()
    finally:
        if options.share:
            close_share_links()
        app.jobs.shutdown()
