"""Test-wide set-up: no network, no Hub, quiet libraries, few threads (CI has 2 cores)."""
import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["DIFFUSERS_OFFLINE"] = "1"
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="module")
def circle() -> Image.Image:
    """A red circle on blue, 64 px: the control image of the ControlNet tests."""
    image = Image.new("RGB", (64, 64), (30, 60, 220))
    ImageDraw.Draw(image).ellipse((14, 18, 46, 50), fill=(220, 30, 30))
    return image
