"""The extra networks panel's logic (no gradio): cards for checkpoints, LoRAs and embeddings, search, sort, pages,
and A1111's click-to-insert / click-again-to-remove of a card's text in the prompt.

Sources are `app.models.checkpoints`, `app.loras.entries` and `app.embeddings.entries`; user fields come from the
sidecar JSON beside each file (modules/models/user_metadata.py).
"""
from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modules.models.user_metadata import (UserMetadataError, find_preview, preferred_weight, read_safetensors_metadata,
                                          read_user_metadata, tag_counts)

if TYPE_CHECKING:
    from modules.app import App

log = logging.getLogger(__name__)

KINDS: dict[str, str] = {"checkpoints": "Checkpoints", "lora": "Lora", "textual_inversion": "Textual Inversion"}
SORT_KEYS = ("Name", "Date modified", "Size")
SORT_DIRECTIONS = ("Ascending", "Descending")
CARDS_PER_PAGE = 48  # a page renders at most this many cards, so hundreds of LoRAs stay responsive
SEARCH_TAG_LIMIT = 200  # the most frequent training tags a LoRA is found by


@dataclass(frozen=True)
class Card:
    kind: str  # a KINDS key
    key: str  # the id the browser sends back: the file's path
    name: str  # shown on the card
    path: Path
    insert: str  # LoRA: the name in <lora:…>; embedding: its prompt word; checkpoint: the top bar's title
    mtime: float = 0.0
    size: int = 0
    user: Mapping[str, Any] = field(default_factory=dict)  # the sidecar's fields
    user_error: str | None = None  # the sidecar exists but cannot be read
    problem: str | None = None  # why it will not work with the loaded model (embeddings)
    preview: Path | None = None
    badge: str = ""  # what it is for: SD1 / SDXL / clip_l ...
    short_hash: str | None = None
    search_text: str = ""  # lower case: name, alias, relative path, hash, activation text, training tags

    @property
    def description(self) -> str:
        return str(self.user.get("description") or "")


# ------------------------------------------------------------------------------------------ collecting


def _file_stats(path: Path) -> tuple[float, int]:
    """(mtime, size); a diffusers folder's size is the sum of its files."""
    try:
        if path.is_dir():
            files = [p.stat() for p in path.rglob("*") if p.is_file()]
            return path.stat().st_mtime, sum(stat.st_size for stat in files)
        stat = path.stat()
        return stat.st_mtime, stat.st_size
    except OSError:
        return 0.0, 0


def _user_fields(path: Path) -> tuple[dict[str, Any], str | None]:
    try:
        return read_user_metadata(path), None
    except (UserMetadataError, OSError) as error:
        return {}, str(error)


def _search_text(*parts: Any) -> str:
    return " ".join(str(part) for part in parts if part).lower()


def make_card(kind: str, path: Path, name: str, insert: str, *, badge: str = "", short_hash: str | None = None,
              terms: Iterable[str] = (), problem: str | None = None) -> Card:
    """A card with the file's stats, sidecar fields and preview read now."""
    mtime, size = _file_stats(path)
    user, error = _user_fields(path)
    search = _search_text(name, insert, path.as_posix(), short_hash, user.get("activation text"),
                          user.get("description"), *terms)
    return Card(kind, str(path), name, path, insert, mtime, size, user, error, problem, find_preview(path), badge,
                short_hash, search)


def _call(entry: Any, method: str) -> Any:
    """`entry.method()` for an optional method of a registry entry; None when it is missing or fails."""
    function = getattr(entry, method, None)
    if not callable(function):
        return function
    try:
        return function()
    except Exception as error:  # a broken file must not hide the other cards
        log.warning("%s of %s failed: %s", method, getattr(entry, "path", entry), error)
        return None


class TrainingTags:
    """Training tags per LoRA file (from its header), cached by (path, mtime, size) so a rescan re-reads only
    files that changed."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, float, int], list[str]] = {}
        self._lock = threading.Lock()

    def of(self, entry: Any) -> list[str]:
        path = Path(entry.path)
        mtime, size = _file_stats(path)
        key = (str(path), mtime, size)
        with self._lock:
            if key in self._cache:
                return self._cache[key]
        metadata = _call(entry, "metadata")
        if not isinstance(metadata, Mapping):
            try:
                metadata = read_safetensors_metadata(path)
            except UserMetadataError:
                metadata = {}
        tags = [tag for tag, _count in tag_counts(metadata)[:SEARCH_TAG_LIMIT]]
        with self._lock:
            self._cache[key] = tags
        return tags

    def keep_only(self, paths: set[str]) -> None:
        """Forget files no longer listed."""
        with self._lock:
            self._cache = {key: tags for key, tags in self._cache.items() if key[0] in paths}


def checkpoint_cards(app: App) -> list[Card]:
    return [make_card("checkpoints", entry.path, entry.stem, entry.title, short_hash=entry.short_hash)
            for entry in app.models.checkpoints]


def lora_prompt_name(entry: Any, loras: Any) -> str:
    """A1111 ("Alias from file"): the alias (ss_output_name) when it finds this very file, else the file stem."""
    alias = getattr(entry, "alias", None)
    if alias and alias != entry.name:
        try:
            found = loras.find(alias)
        except Exception:  # an ambiguous or unknown alias
            found = None
        if found is not None and Path(found.path) == Path(entry.path):
            return alias
    return entry.name


def lora_cards(app: App, tags: TrainingTags) -> list[Card]:
    loras = app.loras
    cards = []
    for entry in loras.entries:
        family = getattr(entry, "family", None)
        cards.append(make_card("lora", Path(entry.path), entry.name, lora_prompt_name(entry, loras),
                               badge=(family or "").upper(), short_hash=_call(entry, "short_hash"),
                               terms=[getattr(entry, "alias", ""), *tags.of(entry)]))
    return cards


def embedding_badge(widths: Mapping[str, int]) -> str:
    """Which models an embedding is for, from its vector widths: 768 → SD1, 1024 → SD2, clip_l + clip_g → SDXL."""
    if len(widths) == 2:
        return "SDXL"
    width = next(iter(widths.values()), 0)
    return {768: "SD1", 1024: "SD2"}.get(width, f"{width}-d" if width else "")


def _loaded_model(app: App) -> Any:
    try:
        return app.models.model
    except RuntimeError:  # NoCheckpointError: nothing loaded, so nothing to check the fit against
        return None


def embedding_cards(app: App) -> list[Card]:
    embeddings = app.embeddings
    skipped = embeddings.skipped_for(_loaded_model(app))
    return [make_card("textual_inversion", Path(entry.path), entry.name, entry.name,
                      badge=embedding_badge(getattr(entry, "widths", {})), short_hash=_call(entry, "short_hash"),
                      problem=skipped.get(entry.name))
            for entry in embeddings.entries]


class NetworkIndex:
    """The cards of each kind as of the last scan. Shared by every browser tab; rebuilt on open and on Refresh."""

    def __init__(self) -> None:
        self._cards: dict[str, list[Card]] = {kind: [] for kind in KINDS}
        self._tags = TrainingTags()

    def rebuild(self, app: App) -> None:
        """Read the app's current lists (no folder rescan) with each file's sidecar and preview."""
        loras = lora_cards(app, self._tags)
        self._tags.keep_only({card.key for card in loras})
        self._cards = {"checkpoints": checkpoint_cards(app), "lora": loras, "textual_inversion": embedding_cards(app)}

    def cards(self, kind: str) -> list[Card]:
        return self._cards.get(kind, [])

    def find(self, kind: str, key: str) -> Card | None:
        return next((card for card in self.cards(kind) if card.key == key), None)


def rescan(app: App) -> list[str]:
    """Refresh's rescan of every folder; returns a warning per source that failed (the others still refresh)."""
    warnings = []
    for label, source in (("checkpoints", app.models), ("LoRAs", app.loras), ("embeddings", app.embeddings)):
        try:
            source.refresh()
        except Exception as error:
            warnings.append(f"Could not rescan {label}: {error}")
    return warnings


# ------------------------------------------------------------------------------------ search, sort, pages


def matches(card: Card, query: str) -> bool:
    """Every whitespace-separated word of `query` occurs in the card's name, alias, path, hash, tags..."""
    return all(word in card.search_text for word in query.lower().split())


def filter_cards(cards: Sequence[Card], query: str) -> list[Card]:
    return [card for card in cards if matches(card, query)] if query.strip() else list(cards)


def sort_cards(cards: Sequence[Card], sort_key: str, descending: bool = False) -> list[Card]:
    """By name (case-insensitive), date modified or size; ties keep name order."""
    by_name = sorted(cards, key=lambda card: (card.name.lower(), card.key))
    if sort_key == "Date modified":
        return sorted(by_name, key=lambda card: card.mtime, reverse=descending)
    if sort_key == "Size":
        return sorted(by_name, key=lambda card: card.size, reverse=descending)
    return by_name[::-1] if descending else by_name


@dataclass(frozen=True)
class CardPage:
    cards: list[Card]
    page: int  # 0-based, clamped
    pages: int
    total: int  # cards matching the search


def page_of(cards: Sequence[Card], page: int, per_page: int = CARDS_PER_PAGE) -> CardPage:
    pages = max(1, -(-len(cards) // per_page))  # ceil
    page = min(max(0, page), pages - 1)
    return CardPage(list(cards[page * per_page:(page + 1) * per_page]), page, pages, len(cards))


def visible_page(cards: Sequence[Card], query: str, sort_key: str, direction: str, page: int) -> CardPage:
    return page_of(sort_cards(filter_cards(cards, query), sort_key, direction == "Descending"), page)


# ----------------------------------------------------------------------------------- prompt insert/remove


def format_weight(weight: float) -> str:
    return f"{weight:g}"


def lora_prompt_text(card: Card, default_weight: float = 1.0) -> str:
    """A1111: `<lora:name:preferred weight>` followed by the activation text."""
    tag = f"<lora:{card.insert}:{format_weight(preferred_weight(card.user, default_weight))}>"
    activation = str(card.user.get("activation text") or "").strip()
    return f"{tag} {activation}" if activation else tag


_TAG_START = re.compile(r"<([^:<>]+:[^:<>]+)(?::[^<>]*)?>")


def _append(prompt: str, text: str, separator: str) -> str:
    if not prompt or prompt[-1].isspace():
        return prompt + text
    return prompt + separator + text


def _remove_tag(prompt: str, tag: str, after: str, separator: str) -> str | None:
    """Remove every `<kind:name:…>` tag naming `tag` (any weight); at the first, also the text that was inserted
    after it and the separator before it (A1111 `tryToRemoveExtraNetworkFromPrompt`). None: not in the prompt."""
    found = [m for m in _TAG_START.finditer(prompt) if m.group(1) == tag]
    if not found:
        return None
    first = found[0].start()
    for match in reversed(found):
        prompt = prompt[:match.start()] + prompt[match.end():]
    if after and prompt[first:first + len(after)] == after:
        prompt = prompt[:first] + prompt[first + len(after):]
    if separator and first >= len(separator) and prompt[first - len(separator):first] == separator:
        prompt = prompt[:first - len(separator)] + prompt[first:]
    return prompt


def _remove_words(prompt: str, text: str, separator: str) -> str | None:
    """Remove `text` where it stands as a whole word (with the separator before it). None: not in the prompt."""
    pattern = re.compile(f"(?:{re.escape(separator)})?(?<![\\w]){re.escape(text)}(?![\\w])" if separator
                         else f"(?<![\\w]){re.escape(text)}(?![\\w])")
    removed, count = pattern.subn("", prompt)
    return removed if count else None


def toggle_in_prompt(prompt: str, text: str, separator: str = " ") -> tuple[str, bool]:
    """A card click: remove `text` when the prompt has it, else append it. Returns (prompt, added).

    A text starting with a `<lora:name:…>` tag counts as present when the prompt has a tag of that name with any
    weight, so a card still removes a tag whose weight was edited by hand.
    """
    text = text.strip()
    if not text:
        return prompt, False
    tag = _TAG_START.match(text)
    removed = (_remove_tag(prompt, tag.group(1), text[tag.end():], separator) if tag
               else _remove_words(prompt, text, separator))
    if removed is not None:
        return removed, False
    return _append(prompt, text, separator), True


@dataclass(frozen=True)
class PromptEdit:
    prompt: str
    negative_prompt: str
    message: str


def apply_card(card: Card, prompt: str, negative_prompt: str, *, to_negative: bool = False,
               default_weight: float = 1.0, separator: str = " ") -> PromptEdit:
    """What clicking a LoRA or embedding card does to the prompts.

    LoRA: its tag (+ activation text) in the prompt and its "negative text" in the negative prompt, both toggled.
    Embedding: its name in the prompt, or in the negative prompt when that was the last one focused (A1111).
    """
    if card.kind == "lora":
        prompt, added = toggle_in_prompt(prompt, lora_prompt_text(card, default_weight), separator)
        negative_text = str(card.user.get("negative text") or "").strip()
        if negative_text:
            negative_prompt = _toggle_to(negative_prompt, negative_text, added, separator)
        return PromptEdit(prompt, negative_prompt, f"{'Added' if added else 'Removed'} LoRA {card.insert}")
    if card.kind == "textual_inversion":
        if to_negative:
            negative_prompt, added = toggle_in_prompt(negative_prompt, card.insert, separator)
        else:
            prompt, added = toggle_in_prompt(prompt, card.insert, separator)
        where = "negative prompt" if to_negative else "prompt"
        return PromptEdit(prompt, negative_prompt, f"{'Added' if added else 'Removed'} {card.insert} "
                                                   f"{'to' if added else 'from'} the {where}")
    raise ValueError(f"a {KINDS.get(card.kind, card.kind)} card does not go into the prompt")


def _toggle_to(prompt: str, text: str, present: bool, separator: str) -> str:
    """Make `text`'s presence follow the LoRA tag's (added with it, removed with it)."""
    removed = _remove_words(prompt, text, separator)
    if present:
        return prompt if removed is not None else _append(prompt, text, separator)
    return removed if removed is not None else prompt


# -------------------------------------------------------------------------------------------- user fields


def user_field_values(card: Card) -> dict[str, Any]:
    """The editor's values for a card (A1111 keys → editor names)."""
    user = card.user
    weight = user.get("preferred weight")
    return {"activation_text": str(user.get("activation text") or ""),
            "negative_text": str(user.get("negative text") or ""),
            "preferred_weight": float(weight) if isinstance(weight, (int, float)) else 0.0,
            "description": str(user.get("description") or ""), "notes": str(user.get("notes") or ""),
            "sd_version": str(user.get("sd version") or "Unknown")}


def user_field_changes(kind: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """Editor values → sidecar changes; LoRA-only fields are written for LoRAs only. Empty text removes a key."""
    changes: dict[str, Any] = {"description": values.get("description"), "notes": values.get("notes"),
                               "sd version": values.get("sd_version")}
    if kind == "lora":
        weight = float(values.get("preferred_weight") or 0)
        changes.update({"activation text": values.get("activation_text"), "negative text": values.get("negative_text"),
                        "preferred weight": weight})
    return {key: (value.strip() or None) if isinstance(value, str) else value for key, value in changes.items()}
