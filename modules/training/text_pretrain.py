"""A short supervised warm-up for the text encoder: read the scene's attributes back from the caption.

A text encoder trained from scratch only through the diffusion loss learns the meaning of words slowly (the
denoiser first learns unconditional structure). Teaching it first to predict what each caption says
(background colour, and per shape its colour, class, size and position, "unsaid" where the caption is silent)
from its pooled output (the EOS token, as CLIP pools) makes the words linearly readable from the start; the
joint diffusion training then only has to route them through cross-attention. Costs seconds.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from transformers import CLIPTextModel

from modules.shapes.captions import PromptSpec, parse_prompt
from modules.shapes.world import COLOURS, POSITIONS, SHAPES, SIZES

IGNORE = -100  # cross-entropy ignore index: no second shape
# Per caption: background, shape count, then per shape (2): colour, class, size (0 = unsaid), position (0 = unsaid).
HEAD_SIZES = (len(COLOURS), 2) + (len(COLOURS), len(SHAPES), len(SIZES) + 1, len(POSITIONS) + 1) * 2


def caption_labels(spec: PromptSpec) -> list[int]:
    """Class indices for every head (see HEAD_SIZES) of one parsed caption."""
    labels = [COLOURS.index(spec.background) if spec.background else IGNORE, len(spec.shapes) - 1]
    for index in range(2):
        if index < len(spec.shapes):
            shape = spec.shapes[index]
            labels += [COLOURS.index(shape.colour) if shape.colour else IGNORE, SHAPES.index(shape.kind),
                       SIZES.index(shape.size) + 1 if shape.size else 0,
                       POSITIONS.index(shape.position) + 1 if shape.position else 0]
        else:
            labels += [IGNORE] * 4
    return labels


def labels_for_captions(captions: list[str]) -> Tensor:
    return torch.tensor([caption_labels(parse_prompt(text)) for text in captions])


class AttributeHeads(nn.Module):
    """One linear classifier per attribute on the pooled text embedding (discarded after the warm-up)."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.heads = nn.ModuleList(nn.Linear(hidden, size) for size in HEAD_SIZES)

    def loss(self, pooled: Tensor, labels: Tensor) -> Tensor:
        return sum(nn.functional.cross_entropy(head(pooled), labels[:, i], ignore_index=IGNORE)
                   for i, head in enumerate(self.heads))


def pretrain_text_encoder(text_encoder: CLIPTextModel, token_ids: Tensor, labels: Tensor, *, steps: int,
                          batch_size: int, learning_rate: float, seed: int, device: torch.device | str = "cpu",
                          on_step: Callable[[int, float], None] | None = None) -> float:
    """Train the encoder (+ throw-away heads) to classify caption attributes; returns the final accuracy."""
    generator = torch.Generator().manual_seed(seed)
    heads = AttributeHeads(text_encoder.config.hidden_size).to(device)
    parameters = [*text_encoder.parameters(), *heads.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=0.0)
    text_encoder.train()
    for step in range(steps):
        rows = torch.randint(len(token_ids), (batch_size,), generator=generator)
        pooled = text_encoder(token_ids[rows].to(device)).pooler_output
        loss = heads.loss(pooled, labels[rows].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if on_step is not None:
            on_step(step, loss.item())
    text_encoder.eval()
    with torch.no_grad():
        rows = torch.randint(len(token_ids), (512,), generator=generator)
        pooled = text_encoder(token_ids[rows].to(device)).pooler_output
        wanted = labels[rows].to(device)
        correct = [(head(pooled).argmax(-1) == wanted[:, i])[wanted[:, i] != IGNORE]
                   for i, head in enumerate(heads.heads)]
    return float(torch.cat(correct).float().mean())
