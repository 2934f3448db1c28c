"""The scripts that are part of the app itself (registered before any extension; not isolated).

Add a core script here: one import and one entry in `core_scripts`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from modules.controlnet_units import ControlNetScript
from modules.extensions.api import Script
from modules.extensions.poor_mans_outpainting import PoorMansOutpainting

if TYPE_CHECKING:
    from modules.app import App


def core_scripts(app: App) -> list[Script]:
    return [PoorMansOutpainting(), ControlNetScript(app)]  # ControlNet: API alwayson_scripts.controlnet (issue 6)
