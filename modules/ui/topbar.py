"""The bar above the tabs (A1111's quicksettings): checkpoint, VAE, clip skip, refresh, and a status line."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gradio as gr

from modules.ui.results import error_html

if TYPE_CHECKING:
    from modules.app import App

# Settings edited here rather than in the Settings tab.
QUICK_SETTINGS = ("sd_model_checkpoint", "sd_vae", "CLIP_stop_at_last_layers")
NO_CHECKPOINT_MESSAGE = "No checkpoint found: put .safetensors files into models/Stable-diffusion and press 🔄"
APP_ERRORS = (ValueError, RuntimeError, OSError)  # RequestError, SettingsError, UnknownModelError, JobFailed, ...


@dataclass
class TopBar:
    checkpoint: gr.Dropdown
    refresh: gr.Button
    vae: gr.Dropdown
    clip_skip: gr.Slider
    status: gr.HTML


def checkpoint_titles(app: App) -> list[str]:
    return [entry.title for entry in app.models.checkpoints]


def current_title(app: App) -> str | None:
    current = app.models.current
    return current.title if current else None


def status_message(app: App) -> str:
    if not app.models.checkpoints:
        return f"<b>{NO_CHECKPOINT_MESSAGE}</b> <small>(folder: {app.paths.ckpt_dirs[0]})</small>"
    if app.models.current is None:
        return "<b>No checkpoint is loaded: choose one in the list.</b>"
    return ""


def switch_checkpoint(app: App, title: str | None) -> str:
    """Load `title` (a no-op when it is already loaded); the message says how long the switch took."""
    if not title or title == current_title(app):
        return status_message(app)
    app.update_settings({"sd_model_checkpoint": title})
    seconds = app.models.last_switch_seconds or 0.0
    return f"Loaded {current_title(app)} in {seconds:.2f} s"


def refresh_checkpoints(app: App) -> str:
    """Rescan the folders; when nothing is loaded yet, load the first checkpoint found."""
    app.models.refresh()
    if app.models.current is None and app.models.checkpoints:
        return switch_checkpoint(app, app.models.checkpoints[0].title)
    return status_message(app) or f"Found {len(app.models.checkpoints)} checkpoint(s)."


def build_topbar(app: App) -> TopBar:
    with gr.Row(equal_height=True):
        checkpoint = gr.Dropdown(checkpoint_titles(app), value=current_title(app), label="Stable Diffusion checkpoint",
                                 elem_id="setting_sd_model_checkpoint", scale=4)
        refresh = gr.Button("🔄", elem_id="refresh_sd_model_checkpoint", scale=0, min_width=48)
        vae = gr.Dropdown(app.models.vae_choices(), value=app.settings.sd_vae, label="SD VAE", elem_id="setting_sd_vae",
                          scale=2)
        clip_skip = gr.Slider(1, 12, value=app.settings.CLIP_stop_at_last_layers, step=1, label="Clip skip",
                              elem_id="setting_CLIP_stop_at_last_layers", scale=2)
    status = gr.HTML(status_message(app), elem_id="topbar_status")
    return TopBar(checkpoint, refresh, vae, clip_skip, status)


def topbar_values(app: App, bar: TopBar) -> dict[Any, Any]:
    """Current state for a freshly opened page (another tab may have switched the model since start-up)."""
    return {
        bar.checkpoint: gr.Dropdown(choices=checkpoint_titles(app), value=current_title(app)),
        bar.vae: gr.Dropdown(choices=app.models.vae_choices(), value=app.settings.sd_vae),
        bar.clip_skip: app.settings.CLIP_stop_at_last_layers,
        bar.status: status_message(app),
    }


def _failed(action: str, error: Exception) -> str:
    gr.Warning(f"{action}: {error}")
    return error_html(f"{action}: {error}")


def wire_topbar(app: App, bar: TopBar) -> None:
    def on_checkpoint(title: str | None) -> dict[Any, Any]:
        try:
            message = switch_checkpoint(app, title)
        except APP_ERRORS as error:
            message = _failed(f"Could not load {title}", error)
        return {bar.checkpoint: current_title(app), bar.status: message}

    def on_refresh() -> dict[Any, Any]:
        try:
            message = refresh_checkpoints(app)
        except APP_ERRORS as error:
            message = _failed("Refresh failed", error)
        return {**topbar_values(app, bar), bar.status: message}

    def on_setting(key: str, label: str):
        def apply(value: Any) -> Any:
            try:
                app.update_settings({key: value})
            except APP_ERRORS as error:
                return _failed(f"Could not set {label}", error)
            return gr.skip()  # keep the status line (it may say how long a checkpoint switch took)
        return apply

    bar.checkpoint.change(on_checkpoint, inputs=bar.checkpoint, outputs=[bar.checkpoint, bar.status],
                          show_progress="minimal")
    bar.refresh.click(on_refresh, outputs=[bar.checkpoint, bar.vae, bar.clip_skip, bar.status])
    bar.vae.change(on_setting("sd_vae", "the VAE"), inputs=bar.vae, outputs=bar.status, show_progress="minimal")
    bar.clip_skip.change(on_setting("CLIP_stop_at_last_layers", "clip skip"), inputs=bar.clip_skip,
                         outputs=bar.status, trigger_mode="always_last", show_progress="hidden")
