"""Command-line flags (A1111 names) parsed into one typed, immutable object."""
from __future__ import annotations

import argparse
from dataclasses import dataclass, fields
from typing import Sequence


@dataclass(frozen=True)
class LaunchOptions:
    port: int = 7860
    listen: bool = False
    share: bool = False
    gradio_auth: str | None = None
    api_auth: str | None = None
    nowebui: bool = False
    api: bool = False  # A1111's flag to turn the API on; ours is always on
    data_dir: str | None = None
    models_dir: str | None = None
    ckpt_dir: str | None = None
    vae_dir: str | None = None
    lora_dir: str | None = None
    controlnet_dir: str | None = None
    embeddings_dir: str | None = None
    ckpt: str | None = None
    device: str = "auto"
    precision: str = "auto"
    lowvram: bool = False
    medvram: bool = False
    enable_insecure_extension_access: bool = False

    @property
    def host(self) -> str:
        return "0.0.0.0" if self.listen else "127.0.0.1"

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def build_parser() -> argparse.ArgumentParser:
    # No abbreviations: A1111's `--api` would otherwise be read as a prefix of `--api-auth`.
    parser = argparse.ArgumentParser(prog="launch.py", description="Stable Diffusion WebUI (offline, A1111-compatible)",
                                     allow_abbrev=False)
    serve = parser.add_argument_group("serving")
    serve.add_argument("--port", type=int, default=7860, help="port to serve on (default 7860)")
    serve.add_argument("--listen", action="store_true", help="listen on 0.0.0.0 so other machines can connect")
    serve.add_argument("--share", action="store_true", help="open a public Gradio share link (needs the internet)")
    serve.add_argument("--gradio-auth", metavar="USER:PASS[,USER:PASS]", help="password-protect the web UI")
    serve.add_argument("--api-auth", metavar="USER:PASS[,USER:PASS]", help="HTTP Basic auth for /sdapi/v1")
    serve.add_argument("--nowebui", action="store_true", help="serve the API only")
    serve.add_argument("--api", action="store_true",
                       help="accepted for A1111 compatibility: /sdapi/v1 is always served")
    serve.add_argument("--enable-insecure-extension-access", action="store_true",
                       help="allow installing extensions while listening on the network or sharing")
    folders = parser.add_argument_group("folders")
    folders.add_argument("--data-dir", help="root for models/, outputs/, config.yaml, styles.csv")
    for flag, what in (("--models-dir", "models/"), ("--ckpt-dir", "extra checkpoints"), ("--vae-dir", "VAEs"),
                       ("--lora-dir", "LoRAs"), ("--controlnet-dir", "ControlNets"),
                       ("--embeddings-dir", "textual inversion embeddings")):
        folders.add_argument(flag, help=f"folder for {what}")
    model = parser.add_argument_group("model")
    model.add_argument("--ckpt", help="checkpoint to load first (file name, title or hash)")
    model.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    model.add_argument("--precision", default="auto", choices=("auto", "fp32", "fp16", "bf16"))
    model.add_argument("--lowvram", action="store_true", help="CUDA: keep only the running part on the GPU (slow)")
    model.add_argument("--medvram", action="store_true", help="CUDA: move whole models on and off the GPU per use")
    return parser


def parse_options(argv: Sequence[str] | None = None) -> LaunchOptions:
    namespace = build_parser().parse_args(argv)
    return LaunchOptions(**vars(namespace))
