"""HTML of the extra networks panel (no gradio): the card grid with its pager, the details view (file facts,
kohya training summary with tag counts, raw safetensors metadata), thumbnails as small inline images, and the
panel's CSS and click bridge (JS).

Every text from files (names, notes, metadata) is HTML-escaped. Thumbnails are inlined as data URIs, so no model
folder is ever served over HTTP.
"""
from __future__ import annotations

import base64
import datetime
import html
import io
import json
import threading
from collections import OrderedDict
from pathlib import Path

from modules.engine.image_codec import DEFAULT_MAX_BYTES, ImageDecodeError, open_image_bytes
from modules.models.user_metadata import TrainingSummary, UserMetadataError, kohya_summary, read_safetensors_metadata
from modules.ui.extra_networks_form import KINDS, Card, CardPage

THUMBNAIL_SIZE = 256  # px, longest side; cards are 160 px wide, so this stays sharp on high-DPI screens
THUMBNAIL_CACHE = 1024  # entries (~10 KB each)
TAGS_SHOWN = 100
METADATA_VALUE_CHARS = 2000
NOUNS = {"checkpoints": ("checkpoint", "checkpoints"), "lora": ("LoRA", "LoRAs"),
         "textual_inversion": ("embedding", "embeddings")}
EMPTY_HINTS = {
    "checkpoints": "No checkpoints found: put .safetensors files into {folder} and press 🔄 Refresh.",
    "lora": "No LoRAs found: put .safetensors files into {folder} and press 🔄 Refresh.",
    "textual_inversion": "No embeddings found: put .pt or .safetensors files into {folder} and press 🔄 Refresh.",
}


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


class Thumbnails:
    """Preview images shrunk to data URIs, cached by (path, mtime, size): a changed preview is re-read."""

    def __init__(self, limit: int = THUMBNAIL_CACHE) -> None:
        self._cache: OrderedDict[tuple[str, float, int], str | None] = OrderedDict()
        self._limit = limit
        self._lock = threading.Lock()

    def data_uri(self, path: Path | None) -> str | None:
        if path is None:
            return None
        try:
            stat = path.stat()
        except OSError:
            return None
        key = (str(path), stat.st_mtime, stat.st_size)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        uri = thumbnail_data_uri(path) if stat.st_size <= DEFAULT_MAX_BYTES else None
        with self._lock:
            self._cache[key] = uri
            while len(self._cache) > self._limit:
                self._cache.popitem(last=False)
        return uri


def thumbnail_data_uri(path: Path, size: int = THUMBNAIL_SIZE) -> str | None:
    """A JPEG data URI of the image shrunk to `size` px; None when the file is not an acceptable image."""
    try:
        image = open_image_bytes(path.read_bytes())
    except (OSError, ImageDecodeError):
        return None
    image.thumbnail((size, size))
    if image.mode != "RGB":  # JPEG has no alpha: flatten onto a neutral grey
        rgba = image.convert("RGBA")
        flat = rgba.copy()
        flat.paste((128, 128, 128, 255), (0, 0, *rgba.size))
        flat.alpha_composite(rgba)
        image = flat.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


# ---------------------------------------------------------------------------------------------------- cards


def _initials(name: str) -> str:
    words = [w for w in name.replace("_", " ").replace("-", " ").split() if w]
    return "".join(w[0] for w in words[:2]).upper() or "?"


def _tooltip(card: Card) -> str:
    lines = [card.name, card.path.name]
    if card.user.get("activation text"):
        lines.append(f"Activation text: {card.user['activation text']}")
    if card.description:
        lines.append(card.description)
    for warning in (card.problem, card.user_error):
        if warning:
            lines.append(f"⚠ {warning}")
    return "\n".join(lines)


def card_html(card: Card, thumbnail: str | None) -> str:
    image = (f'<img class="en-thumb" src="{thumbnail}" alt="" loading="lazy">' if thumbnail else
             f'<div class="en-thumb en-placeholder" aria-hidden="true">{_e(_initials(card.name))}</div>')
    badge = f'<span class="en-badge">{_e(card.badge)}</span>' if card.badge else ""
    description = f'<div class="en-desc">{_e(card.description)}</div>' if card.description else ""
    classes = "en-card en-unfit" if card.problem else "en-card"
    return (f'<div class="{classes}" data-key="{_e(card.key)}" data-action="use" role="button" tabindex="0" '
            f'title="{_e(_tooltip(card))}">{image}{badge}'
            f'<button type="button" class="en-info" data-action="details" title="Metadata and user fields" '
            f'aria-label="Details of {_e(card.name)}">i</button>'
            f'<div class="en-caption"><div class="en-name">{_e(card.name)}</div>{description}</div></div>')


def pager_html(page: CardPage, noun: str) -> str:
    count = f"{page.total} {noun}"
    if page.pages <= 1:
        return f'<div class="en-pager"><span>{_e(count)}</span></div>'
    previous = "disabled" if page.page == 0 else ""
    following = "disabled" if page.page >= page.pages - 1 else ""
    return (f'<div class="en-pager">'
            f'<button type="button" data-action="page" data-page="{page.page - 1}" {previous}>◀</button>'
            f'<span>Page {page.page + 1} of {page.pages} · {_e(count)}</span>'
            f'<button type="button" data-action="page" data-page="{page.page + 1}" {following}>▶</button></div>')


def cards_html(kind: str, page: CardPage, thumbnails: Thumbnails, *, folder: str = "", searching: bool = False) -> str:
    """One tab's grid: the pager line, then at most one page of cards (or why there are none)."""
    singular, plural = NOUNS[kind]
    noun = singular if page.total == 1 else plural
    if page.total == 0:
        hint = "Nothing matches the search." if searching else EMPTY_HINTS[kind].format(folder=folder)
        return f'<p class="en-empty">{_e(hint)}</p>'
    cards = "".join(card_html(card, thumbnails.data_uri(card.preview)) for card in page.cards)
    return f'{pager_html(page, noun)}<div class="en-cards">{cards}</div>'


# -------------------------------------------------------------------------------------------------- details


def _size_text(size: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return ""


def _rows(rows: list[tuple[str, str]]) -> str:
    body = "".join(f"<tr><th>{_e(label)}</th><td>{_e(value)}</td></tr>" for label, value in rows)
    return f'<table class="en-facts">{body}</table>'


def _file_rows(card: Card) -> list[tuple[str, str]]:
    modified = datetime.datetime.fromtimestamp(card.mtime).strftime("%Y-%m-%d %H:%M") if card.mtime else ""
    rows = [("Type", KINDS[card.kind]), ("File", str(card.path)), ("Size", _size_text(card.size)),
            ("Modified", modified)]
    if card.kind == "lora":
        rows.append(("Prompt tag", f"<lora:{card.insert}:…>"))
    if card.short_hash:
        rows.append(("Hash", card.short_hash))
    if card.badge:
        rows.append(("For", card.badge))
    return rows


def _tags_html(tags: list[tuple[str, int]]) -> str:
    chips = "".join(f'<span class="en-tag">{_e(tag)} <b>{count}</b></span>' for tag, count in tags[:TAGS_SHOWN])
    more = f"<p>… and {len(tags) - TAGS_SHOWN} more</p>" if len(tags) > TAGS_SHOWN else ""
    return f"<h4>Training tags ({len(tags)})</h4><div class=\"en-tags\">{chips}</div>{more}"


def summary_html(summary: TrainingSummary) -> str:
    parts = ["<h4>Training (kohya)</h4>", _rows(summary.rows())]
    if summary.buckets:
        parts.append(_rows([("Bucket " + size, f"{count} images") for size, count in summary.buckets]))
    if summary.dataset_dirs:
        parts.append(_rows([(folder, f"{images} images × {repeats} repeats")
                            for folder, images, repeats in summary.dataset_dirs]))
    if summary.tags:
        parts.append(_tags_html(summary.tags))
    return "".join(parts)


def _metadata_value(value: str) -> str:
    try:  # kohya nests JSON in strings: show it indented
        parsed = json.loads(value)
        if isinstance(parsed, (dict, list)):
            value = json.dumps(parsed, indent=1, ensure_ascii=False)
    except ValueError:
        pass
    return value if len(value) <= METADATA_VALUE_CHARS else value[:METADATA_VALUE_CHARS] + " …"


def raw_metadata_html(metadata: dict[str, str]) -> str:
    rows = "".join(f"<tr><th>{_e(key)}</th><td><pre>{_e(_metadata_value(value))}</pre></td></tr>"
                   for key, value in sorted(metadata.items()))
    return (f'<details class="en-raw"><summary>safetensors metadata ({len(metadata)} keys)</summary>'
            f'<table class="en-facts">{rows}</table></details>')


def details_html(card: Card) -> str:
    """The details view: file facts, the training summary with tag counts, and the raw `__metadata__`."""
    parts = [f"<h3>{_e(card.name)}</h3>", _rows(_file_rows(card))]
    for warning in (card.problem, card.user_error):
        if warning:
            parts.append(f'<p class="en-warning">⚠ {_e(warning)}</p>')
    try:
        metadata = read_safetensors_metadata(card.path) if card.path.is_file() else {}
    except UserMetadataError as error:
        parts.append(f'<p class="en-warning">⚠ {_e(error)}</p>')
        metadata = {}
    summary = kohya_summary(metadata)
    if summary is not None:
        parts.append(summary_html(summary))
    if metadata:
        parts.append(raw_metadata_html(metadata))
    elif card.path.suffix.lower() == ".safetensors":
        parts.append("<p>The file has no metadata.</p>")
    return "".join(parts)


# --------------------------------------------------------------------------------------------- CSS and JS

CARDS_CSS = """
.en-cards { display: flex; flex-wrap: wrap; gap: 8px; }
.en-card { position: relative; width: 160px; height: 224px; border-radius: 8px; overflow: hidden; cursor: pointer;
  border: 1px solid var(--border-color-primary); background: var(--background-fill-secondary); }
.en-card:hover, .en-card:focus-visible { outline: 2px solid var(--color-accent); outline-offset: 1px; }
.en-thumb { width: 100%; height: 100%; object-fit: cover; display: block; margin: 0; }
.en-placeholder { display: flex; align-items: center; justify-content: center; font-size: 44px; font-weight: 700;
  color: var(--body-text-color-subdued); background: linear-gradient(135deg, var(--background-fill-secondary),
  var(--border-color-primary)); }
.en-caption { position: absolute; left: 0; right: 0; bottom: 0; padding: 6px 8px; color: #fff;
  background: linear-gradient(transparent, rgba(0, 0, 0, 0.85) 35%); }
.en-name { font-weight: 600; font-size: 0.95em; line-height: 1.2; word-break: break-word; }
.en-desc { display: none; font-size: 0.8em; max-height: 7.5em; overflow: hidden; margin-top: 2px; }
.en-card:hover .en-desc, .en-card:focus-visible .en-desc { display: block; }
.en-info { position: absolute; top: 4px; right: 4px; width: 28px; height: 28px; border-radius: 14px; border: none;
  background: rgba(0, 0, 0, 0.55); color: #fff; font: italic bold 16px Georgia, serif; cursor: pointer; }
.en-info:hover { background: var(--color-accent); }
.en-badge { position: absolute; top: 6px; left: 6px; padding: 1px 6px; border-radius: 4px; font-size: 0.7em;
  background: rgba(0, 0, 0, 0.6); color: #fff; }
.en-pager { display: flex; align-items: center; gap: 8px; margin: 4px 0 8px; color: var(--body-text-color-subdued); }
.en-pager button { padding: 0 10px; border-radius: 4px; border: 1px solid var(--border-color-primary);
  background: var(--button-secondary-background-fill); color: var(--body-text-color); cursor: pointer; }
.en-pager button:disabled { opacity: 0.4; cursor: default; }
.en-unfit { opacity: 0.55; }
.en-empty { color: var(--body-text-color-subdued); padding: 12px 0; }
"""

DETAILS_CSS = """
.en-facts { border-collapse: collapse; margin: 4px 0 10px; font-size: 0.9em; }
.en-facts th { text-align: left; padding: 2px 12px 2px 0; vertical-align: top; white-space: nowrap; }
.en-facts td { padding: 2px 0; word-break: break-all; }
.en-facts pre { margin: 0; white-space: pre-wrap; font-size: 0.9em; }
.en-tags { display: flex; flex-wrap: wrap; gap: 4px; }
.en-tag { padding: 1px 6px; border-radius: 10px; border: 1px solid var(--border-color-primary); font-size: 0.85em; }
.en-tag b { color: var(--color-accent); }
.en-warning { color: #b45309; }
"""

# Installed once per tab by an always-present hidden element: 🎴's tooltip (gradio buttons have none), and which
# prompt box was focused last (an embedding card goes into the negative prompt when that was it, as in A1111).
PAGE_JS = """
const prefix = %s;
const shared = ((window.extraNetworksPanels ||= {})[prefix] ||= {toNegative: false});
document.addEventListener('focusin', (event) => {
  const target = event.target;
  if (!target || !target.closest) return;
  if (target.closest('#' + prefix + '_negative_prompt')) shared.toNegative = true;
  else if (target.closest('#' + prefix + '_prompt')) shared.toNegative = false;
});
document.addEventListener('mouseover', (event) => {
  const button = event.target.closest && event.target.closest('#' + prefix + '_extra_networks_toggle');
  if (button && !button.title) button.title = 'Show/hide extra networks';
});
"""

# The click bridge: one listener on the grid; a card, its (i) button or a pager button sends
# {action, key, page, negative} to the server.
CARDS_JS = """
const prefix = %s;
const fire = (origin) => {
  const actor = origin && origin.closest ? origin.closest('[data-action]') : null;
  if (!actor || !element.contains(actor) || actor.disabled) return false;
  const card = actor.closest('[data-key]');
  const shared = (window.extraNetworksPanels || {})[prefix] || {};
  trigger('click', {action: actor.dataset.action, key: card ? card.dataset.key : '',
                    page: Number(actor.dataset.page || 0), negative: Boolean(shared.toNegative)});
  return true;
};
element.addEventListener('click', (event) => { if (fire(event.target)) event.preventDefault(); });
element.addEventListener('keydown', (event) => {
  if ((event.key === 'Enter' || event.key === ' ') && event.target.matches('[data-action]') && fire(event.target)) {
    event.preventDefault();
  }
});
"""


def page_js(prefix: str) -> str:
    return PAGE_JS % json.dumps(prefix)


def cards_js(prefix: str) -> str:
    return CARDS_JS % json.dumps(prefix)
