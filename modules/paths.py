"""Every folder the app reads or writes, resolved once from the command line."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONFIGS_DIR = PROJECT_ROOT / "modules" / "configs"

# A1111's sub-folders of models/, created (with a README) so users know where files go.
MODEL_SUBFOLDERS = ("Stable-diffusion", "VAE", "Lora", "ControlNet", "VAE-taesd", "VAE-approx", "ESRGAN", "annotators")


@dataclass(frozen=True)
class Paths:
    data_dir: Path
    models_dir: Path
    ckpt_dirs: tuple[Path, ...]
    vae_dir: Path
    lora_dir: Path
    controlnet_dir: Path
    embeddings_dir: Path
    taesd_dirs: tuple[Path, ...]
    esrgan_dir: Path
    outputs_dir: Path
    config_file: Path
    styles_file: Path

    @classmethod
    def from_args(
        cls,
        data_dir: str | Path | None = None,
        *,
        models_dir: str | Path | None = None,
        ckpt_dir: str | Path | None = None,
        vae_dir: str | Path | None = None,
        lora_dir: str | Path | None = None,
        controlnet_dir: str | Path | None = None,
        embeddings_dir: str | Path | None = None,
    ) -> Paths:
        data = Path(data_dir).resolve() if data_dir else PROJECT_ROOT
        models = Path(models_dir).resolve() if models_dir else data / "models"
        ckpt_dirs = [models / "Stable-diffusion"]
        if ckpt_dir:
            ckpt_dirs.append(Path(ckpt_dir).resolve())
        return cls(
            data_dir=data,
            models_dir=models,
            ckpt_dirs=tuple(ckpt_dirs),
            vae_dir=Path(vae_dir).resolve() if vae_dir else models / "VAE",
            lora_dir=Path(lora_dir).resolve() if lora_dir else models / "Lora",
            controlnet_dir=Path(controlnet_dir).resolve() if controlnet_dir else models / "ControlNet",
            embeddings_dir=Path(embeddings_dir).resolve() if embeddings_dir else data / "embeddings",
            taesd_dirs=(models / "VAE-taesd", models / "VAE-approx"),
            esrgan_dir=models / "ESRGAN",
            outputs_dir=data / "outputs",
            config_file=data / "config.yaml",
            styles_file=data / "styles.csv",
        )

    def controlnet_roots(self) -> tuple[Path, ...]:
        """ControlNet folders, A1111's order: models/ControlNet, --controlnet-dir, the extension's own models folder."""
        roots = [self.models_dir / "ControlNet", self.controlnet_dir,
                 self.data_dir / "extensions" / "sd-webui-controlnet" / "models"]
        return tuple(dict.fromkeys(roots))

    def ensure_dirs(self) -> None:
        """Create the folders a fresh --data-dir lacks; never touches files."""
        for sub in MODEL_SUBFOLDERS:
            (self.models_dir / sub).mkdir(parents=True, exist_ok=True)
        for folder in (*self.ckpt_dirs, self.vae_dir, self.outputs_dir, self.embeddings_dir):
            folder.mkdir(parents=True, exist_ok=True)
