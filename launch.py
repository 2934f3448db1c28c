"""Start the WebUI: `python launch.py [--port N] [--listen] [--share] [--nowebui] [--data-dir D] ...`.

Everything runs offline: the Hugging Face libraries are told so before any of them is imported.
"""
from __future__ import annotations

import os

# Read by huggingface_hub / transformers / diffusers at import time, so this must come before any import of them.
for _variable in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "DIFFUSERS_OFFLINE", "HF_DATASETS_OFFLINE",
                  "HF_HUB_DISABLE_TELEMETRY"):
    os.environ[_variable] = "1"
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # gradio would otherwise phone home at start-up
os.environ.setdefault("DO_NOT_TRACK", "1")

import logging  # noqa: E402
import sys  # noqa: E402
from collections.abc import Sequence  # noqa: E402

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging() -> None:
    logging.basicConfig(level=os.environ.get("SD_WEBUI_LOG_LEVEL", "INFO").upper(), format=LOG_FORMAT,
                        datefmt="%H:%M:%S", stream=sys.stdout)
    for noisy in ("httpx", "httpcore", "urllib3", "PIL", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    setup_logging()
    from modules.api.security import parse_credentials
    from modules.options import parse_options

    options = parse_options(argv)
    log = logging.getLogger("launch")
    try:  # checked before the (slow) model load
        parse_credentials(options.api_auth, "--api-auth")
        parse_credentials(options.gradio_auth, "--gradio-auth")
    except ValueError as error:
        log.error("%s", error)
        return 2
    from modules.app import create_app  # imports torch and diffusers: after the cheap checks
    from modules.server import ServerStartError, serve

    app = create_app(options)
    try:
        serve(app)
    except ServerStartError as error:
        log.error("%s", error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
