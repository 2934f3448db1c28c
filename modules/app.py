"""The App: the one object that holds the services (settings, paths, model manager, job queue, image saver).

Built once at start-up by `create_app` and passed to the UI, the API and extensions; there is no other global state.
"""
from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from modules.engine.images import ImageSaver
from modules.engine.request import GenerationRequest
from modules.jobs import Job, JobQueue
from modules.models.embedding_files import EmbeddingRegistry
from modules.models.lora_files import LoraRegistry, lora_roots
from modules.models.manager import ModelManager
from modules.models.registry import HashCache
from modules.models.upscalers import UpscalerRegistry
from modules.options import LaunchOptions
from modules.paths import Paths
from modules.settings import Settings, load_settings, save_settings

if TYPE_CHECKING:
    from modules.extensions.host import ExtensionHost

log = logging.getLogger(__name__)


def pick_device(choice: str) -> torch.device:
    if choice != "auto":
        return torch.device(choice)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(choice: str, device: torch.device) -> torch.dtype:
    if choice == "auto":
        return torch.float16 if device.type in ("cuda", "mps") else torch.float32
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[choice]


@dataclass
class App:
    options: LaunchOptions
    paths: Paths
    models: ModelManager
    jobs: JobQueue = field(init=False)
    upscalers: UpscalerRegistry = field(init=False)
    embeddings: EmbeddingRegistry = field(init=False)  # textual inversion (issue 5)
    loras: LoraRegistry = field(init=False)  # LoRA files and parsed-network cache (issue 5)
    extensions: ExtensionHost = field(init=False)  # extension registry, hooks and scripts (issue 7)
    saver: ImageSaver = field(default_factory=ImageSaver)
    _settings: Settings = field(default_factory=Settings)
    _settings_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def settings(self) -> Settings:
        return self._settings

    def submit(self, request: GenerationRequest, task_id: str | None = None, *,
               series: tuple[int, int] = (0, 1)) -> Job:
        request.validate()
        return self.jobs.submit(request, task_id, series=series)

    def add_extension_settings(self, defaults: dict[str, Any]) -> None:
        """Register extension settings ("<extension>.<key>" → typed default); values saved earlier win."""
        with self._settings_lock:
            self._settings = self._settings.with_extension_defaults(defaults)

    def update_settings(self, changes: dict[str, Any]) -> Settings:
        """Validate, apply side effects (checkpoint / VAE switch), then save config.yaml atomically.

        A failing switch raises and leaves both the settings and the loaded model as they were.
        """
        with self._settings_lock:
            new = self._settings.updated(changes)
            checkpoint = changes.get("sd_model_checkpoint")
            if checkpoint and (self.models.current is None or
                               self.models.find_checkpoint(checkpoint).path != self.models.current.path):
                entry = self.jobs.run_exclusive(lambda: self.models.load(checkpoint))
                new = new.updated({"sd_model_checkpoint": entry.title})
            if "sd_vae" in changes and changes["sd_vae"] != self._settings.sd_vae:
                self.jobs.run_exclusive(lambda: self.models.set_vae(new.sd_vae))
            save_settings(new, self.paths.config_file)
            self._settings = new
            if new.sd_checkpoints_limit != self.models.ram_limit:
                self.models.set_ram_limit(new.sd_checkpoints_limit)
            return new

    def load_initial_checkpoint(self) -> None:
        """--ckpt, else the saved choice, else the first checkpoint; failures are logged, never fatal."""
        candidates = [c for c in (self.options.ckpt, self._settings.sd_model_checkpoint) if c]
        if self.models.checkpoints:
            candidates.append(self.models.checkpoints[0].name)
        if not candidates:
            log.warning("No checkpoint found in %s. Put a .safetensors file there and press refresh.",
                        self.paths.ckpt_dirs[0])
            return
        self.models.set_vae(self._settings.sd_vae if self._settings.sd_vae in self.models.vae_choices() else "Automatic")
        for candidate in candidates:
            try:
                entry = self.models.load(candidate)
            except Exception as error:
                log.error("could not load checkpoint %r: %s", candidate, error)
                continue
            self._settings = self._settings.updated({"sd_model_checkpoint": entry.title})
            return


def create_app(options: LaunchOptions, *, load_model: bool = True) -> App:
    from modules.extensions.startup import create_extension_host  # imports processing (hooks, script outputs)
    from modules.processing import run_job  # the runner needs App; imported here to keep the module graph acyclic

    paths = Paths.from_args(options.data_dir, models_dir=options.models_dir, ckpt_dir=options.ckpt_dir,
                            vae_dir=options.vae_dir, lora_dir=options.lora_dir, controlnet_dir=options.controlnet_dir,
                            embeddings_dir=options.embeddings_dir)
    paths.ensure_dirs()
    settings = load_settings(paths.config_file)
    device = pick_device(options.device)
    dtype = pick_dtype(options.precision, device)
    if device.type == "cpu" and os.environ.get("OMP_NUM_THREADS") is None:
        torch.set_num_threads(max(os.cpu_count() or 1, 1))
    models = ModelManager(checkpoint_dirs=paths.ckpt_dirs, vae_dir=paths.vae_dir, preview_dirs=paths.taesd_dirs,
                          hash_cache=HashCache(paths.models_dir / ".hashes.json"), device=device, dtype=dtype,
                          ram_limit=settings.sd_checkpoints_limit, low_memory=options.medvram or options.lowvram,
                          controlnet_dirs=paths.controlnet_roots(), annotator_dirs=(paths.models_dir / "annotators",),
                          controlnet_cache_size=settings.control_net_model_cache_size)
    app = App(options=options, paths=paths, models=models, _settings=settings)
    app.upscalers = UpscalerRegistry(paths.esrgan_dir, device=device)
    app.embeddings = EmbeddingRegistry(paths.embeddings_dir)  # reads the folder on first use
    app.loras = LoraRegistry(lora_roots(paths.models_dir, paths.lora_dir))
    app.jobs = JobQueue(lambda job: run_job(app, job))
    app.extensions = create_extension_host(app)  # after the queue: extensions get the app; failures are recorded
    log.info("device %s, precision %s", device, dtype)
    if load_model:
        app.load_initial_checkpoint()
    return app
