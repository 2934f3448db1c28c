"""A1111 prompt syntax as pure text functions (no torch): comments, extra-network tags, prompt editing,
alternation and emphasis.

Ported from AUTOMATIC1111's ``modules/prompt_parser.py`` (v1.6+ behaviour). A1111 parses prompt editing with a
lark grammar; lark is not a dependency here, so ``_ScheduleParser`` is a recursive-descent parser for the same
grammar::

    start:       (prompt | /[][():]/+)*            stray brackets and colons are literal only at top level
    prompt:      (emphasized | scheduled | alternate | plain | WHITESPACE)*
    emphasized:  "(" prompt ")" | "(" prompt ":" prompt ")" | "[" prompt "]"      kept as literal text
    scheduled:   "[" [prompt ":"] prompt ":" [WHITESPACE] NUMBER [WHITESPACE] "]"
    alternate:   "[" prompt ("|" [prompt])+ "]"
    plain:       /([^\\\\\\[\\]():|]|\\\\.)+/

A prompt the grammar rejects (a bare ``|``, a trailing backslash) is used literally, as in A1111.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Union

# --- comments -------------------------------------------------------------------------------------------------

_WHOLE_LINE_COMMENT = re.compile(r"(^|\n)#[^\n]*(\n|$)")
_TRAILING_COMMENT = re.compile(r"#[^\n]*(\n|$)")


def strip_comments(text: str) -> str:
    """Remove ``# …`` comments to the end of the line (A1111 ``enable_prompt_comments``, on by default)."""
    text = _WHOLE_LINE_COMMENT.sub("\n", text)
    return _TRAILING_COMMENT.sub("\n", text)


# --- extra networks: <lora:name:0.8>, <lyco:name:te=1:unet=0.5>, <hypernet:name:1> ------------------------------

_EXTRA_NETWORK_TAG = re.compile(r"<(\w+):([^>]+)>")


@dataclass
class ExtraNetworkTag:
    """One ``<kind:name:args…>`` tag. ``args`` are the positional items after the name; ``named`` holds
    ``key=value`` items (A1111 ``ExtraNetworkParams``)."""

    kind: str
    name: str
    args: list[str] = field(default_factory=list)
    named: dict[str, str] = field(default_factory=dict)


def _tag_from_match(match: re.Match[str]) -> ExtraNetworkTag:
    positional: list[str] = []
    named: dict[str, str] = {}
    for item in match.group(2).split(":"):
        parts = item.split("=", 2)
        if len(parts) == 2:  # exactly one "=" makes a named item, as in A1111
            named[parts[0]] = parts[1]
        else:
            positional.append(item)
    name = positional[0] if positional else ""
    return ExtraNetworkTag(kind=match.group(1), name=name, args=positional[1:], named=named)


def extract_extra_networks(prompt: str) -> tuple[str, list[ExtraNetworkTag]]:
    """Strip every ``<kind:…>`` tag from a positive prompt and return (text, tags in order).

    Comments are removed first, so a commented-out tag does nothing. Call it on the positive prompt only:
    A1111 leaves tags in the negative prompt as literal text.
    """
    tags: list[ExtraNetworkTag] = []

    def collect(match: re.Match[str]) -> str:
        tags.append(_tag_from_match(match))
        return ""

    return _EXTRA_NETWORK_TAG.sub(collect, strip_comments(prompt)), tags


def strip_extra_network_tags(prompt: str) -> str:
    return _EXTRA_NETWORK_TAG.sub("", prompt)


# --- prompt editing and alternation ---------------------------------------------------------------------------

_NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"  # lark common.SIGNED_NUMBER
_SCHEDULE_WHEN = re.compile(rf"\s*({_NUMBER})\s*\]")
_ONLY_WHEN = re.compile(rf"\s*({_NUMBER})\s*")
_SPECIAL = "\\[]():|"


@dataclass
class _Scheduled:
    """``[before:after:when]``; ``before`` is None for ``[after:when]``."""

    before: list[_Node] | None
    after: list[_Node]
    when: str  # the number as written: a dot makes it a fraction of the steps


@dataclass
class _Alternate:
    options: list[list[_Node]]


_Node = Union[str, _Scheduled, _Alternate]


class _ParseError(Exception):
    pass


class _ScheduleParser:
    """Recursive descent over one prompt; each ``_parse_*`` returns (nodes, end index) or raises _ParseError."""

    def __init__(self, text: str) -> None:
        self.text = text

    def char(self, index: int) -> str:
        return self.text[index] if index < len(self.text) else ""

    def parse_start(self) -> list[_Node]:
        nodes: list[_Node] = []
        index = 0
        while True:
            inner, index = self.parse_prompt(index)
            nodes += inner
            char = self.char(index)
            if not char:
                return nodes
            if char not in "[]():":  # a bare "|" or a dangling "\" — the grammar rejects the prompt
                raise _ParseError(f"unexpected {char!r} at {index}")
            nodes.append(char)  # stray bracket or colon: literal at top level
            index += 1

    def parse_prompt(self, index: int) -> tuple[list[_Node], int]:
        """Longest run of plain text and well-formed bracket constructs starting at index."""
        nodes: list[_Node] = []
        plain_start = index
        while index < len(self.text):
            char = self.text[index]
            if char == "\\":
                if self.char(index + 1) in ("", "\n"):  # lark's "." does not match a newline
                    break
                index += 2
                continue
            if char not in _SPECIAL:
                index += 1
                continue
            if char not in "([":
                break
            try:
                construct, end = self.parse_round(index) if char == "(" else self.parse_square(index)
            except _ParseError:
                break
            nodes.append(self.text[plain_start:index])
            nodes += construct
            index = plain_start = end
        nodes.append(self.text[plain_start:index])
        return [node for node in nodes if node != ""], index

    def parse_round(self, index: int) -> tuple[list[_Node], int]:
        """``(prompt)`` or ``(prompt:prompt)``: emphasis, kept as text for parse_prompt_attention."""
        first, index = self.parse_prompt(index + 1)
        if self.char(index) == ")":
            return ["(", *first, ")"], index + 1
        if self.char(index) == ":":
            second, index = self.parse_prompt(index + 1)
            if self.char(index) == ")":
                return ["(", *first, ":", *second, ")"], index + 1
        raise _ParseError(f"unclosed '(' before {index}")

    def parse_square(self, index: int) -> tuple[list[_Node], int]:
        first, index = self.parse_prompt(index + 1)
        char = self.char(index)
        if char == "]":
            return ["[", *first, "]"], index + 1
        if char == "|":
            return self.parse_alternate(first, index)
        if char == ":":
            return self.parse_scheduled(first, index)
        raise _ParseError(f"unclosed '[' before {index}")

    def parse_alternate(self, first: list[_Node], index: int) -> tuple[list[_Node], int]:
        options = [first]
        while self.char(index) == "|":
            option, index = self.parse_prompt(index + 1)
            options.append(option)
        if self.char(index) != "]":
            raise _ParseError(f"unclosed alternation before {index}")
        return [_Alternate(options)], index + 1

    def parse_scheduled(self, first: list[_Node], colon: int) -> tuple[list[_Node], int]:
        second, index = self.parse_prompt(colon + 1)
        if self.char(index) == ":":  # [before:after:when]
            match = _SCHEDULE_WHEN.match(self.text, index + 1)
            if match:
                return [_Scheduled(first, second, match.group(1))], match.end()
        elif self.char(index) == "]":  # [after:when]
            match = _ONLY_WHEN.fullmatch(self.text, colon + 1, index)
            if match:
                return [_Scheduled(None, first, match.group(1))], index + 1
        raise _ParseError(f"malformed prompt editing before {index}")


def _step_resolver(steps: int, base_steps: int, hires: bool) -> Callable[[str], int]:
    """Map a written ``when`` to a schedule step. A dot means a fraction of the steps; with a hires pass,
    integers count from the end of the first pass and fractions 1.0-2.0 address the hires pass."""
    int_offset, fraction_offset = (base_steps, 1.0) if hires else (0, 0.0)

    def resolve(when: str) -> int:
        value = float(when)
        value = (value - fraction_offset) * steps if "." in when else value - int_offset
        return min(steps, int(value))

    return resolve


def _collect_steps(nodes: list[_Node], steps: int, resolve: Callable[[str], int], found: set[int]) -> None:
    for node in nodes:
        if isinstance(node, _Scheduled):
            when = resolve(node.when)
            if when >= 1:
                found.add(when)
            _collect_steps(node.before or [], steps, resolve, found)
            _collect_steps(node.after, steps, resolve, found)
        elif isinstance(node, _Alternate):
            found.update(range(1, steps + 1))
            for option in node.options:
                _collect_steps(option, steps, resolve, found)


def _text_at_step(nodes: list[_Node], step: int, resolve: Callable[[str], int]) -> str:
    parts: list[str] = []
    for node in nodes:
        if isinstance(node, str):
            parts.append(node)
        elif isinstance(node, _Scheduled):
            branch = (node.before or []) if step <= resolve(node.when) else node.after
            parts.append(_text_at_step(branch, step, resolve))
        else:
            option = node.options[(step - 1) % len(node.options)]  # step k uses option (k-1) mod n
            parts.append(_text_at_step(option, step, resolve))
    return "".join(parts)


def get_prompt_schedule(prompt: str, steps: int, hires_steps: int | None = None) -> list[tuple[int, str]]:
    """[(until_step, text), …] with 1-based inclusive ``until_step``, the last one == the pass's steps.

    A1111 ``get_learned_conditioning_prompt_schedules`` for one prompt. ``steps`` is the first pass's step
    count; pass ``hires_steps`` to get the schedule of the hires pass.

    >>> get_prompt_schedule("a [b:c:0.5] d", 10)
    [(5, 'a b d'), (10, 'a c d')]
    """
    hires = hires_steps is not None
    total = hires_steps if hires_steps is not None else steps
    try:
        nodes = _ScheduleParser(prompt).parse_start()
    except _ParseError:
        return [(total, prompt)]
    resolve = _step_resolver(total, steps, hires)
    found = {total}
    _collect_steps(nodes, total, resolve, found)
    return [(step, _text_at_step(nodes, step, resolve)) for step in sorted(found)]


# --- emphasis -------------------------------------------------------------------------------------------------

_ATTENTION_TOKEN = re.compile(
    r"""
\\\(|
\\\)|
\\\[|
\\]|
\\\\|
\\|
\(|
\[|
:\s*([+-]?[.\d]+)\s*\)|
\)|
]|
[^\\()\[\]:]+|
:
""",
    re.X,
)
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)
ROUND_BRACKET_MULTIPLIER = 1.1
SQUARE_BRACKET_MULTIPLIER = 1 / 1.1
BREAK_MARKER = ("BREAK", -1.0)  # A1111's in-band marker: text "BREAK" with weight -1 closes the chunk


def _parse_weight(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:  # e.g. "(a:1.2.3)"; A1111 raises, we keep the text literal
        return None


def parse_prompt_attention(text: str) -> list[tuple[str, float]]:
    """Split text into (fragment, weight) runs; ``(x)`` ×1.1, ``[x]`` ÷1.1, ``(x:w)`` ×w, nesting multiplies,
    unclosed brackets apply to the rest, ``\\(`` ``\\)`` ``\\[`` ``\\]`` ``\\\\`` are literal.

    ``BREAK`` yields ``BREAK_MARKER``. Ported as is from A1111, quirks included: a BREAK inside brackets has its
    weight multiplied and then counts as the word "BREAK".

    >>> parse_prompt_attention('an (important) word')
    [('an ', 1.0), ('important', 1.1), (' word', 1.0)]
    """
    result: list[list] = []  # [text, weight] pairs, mutated while brackets close
    round_brackets: list[int] = []
    square_brackets: list[int] = []

    def multiply_range(start: int, multiplier: float) -> None:
        for position in range(start, len(result)):
            result[position][1] *= multiplier

    for match in _ATTENTION_TOKEN.finditer(text):
        token, weight_text = match.group(0), match.group(1)
        weight = _parse_weight(weight_text) if weight_text is not None else None
        if token.startswith("\\"):
            result.append([token[1:], 1.0])
        elif token == "(":
            round_brackets.append(len(result))
        elif token == "[":
            square_brackets.append(len(result))
        elif weight is not None and round_brackets:
            multiply_range(round_brackets.pop(), weight)
        elif token == ")" and round_brackets:
            multiply_range(round_brackets.pop(), ROUND_BRACKET_MULTIPLIER)
        elif token == "]" and square_brackets:
            multiply_range(square_brackets.pop(), SQUARE_BRACKET_MULTIPLIER)
        else:
            for index, part in enumerate(_BREAK.split(token)):
                if index > 0:
                    result.append(list(BREAK_MARKER))
                result.append([part, 1.0])

    for position in round_brackets:
        multiply_range(position, ROUND_BRACKET_MULTIPLIER)
    for position in square_brackets:
        multiply_range(position, SQUARE_BRACKET_MULTIPLIER)

    if not result:
        result = [["", 1.0]]
    merged = [result[0]]
    for text_part, weight in result[1:]:  # merge runs of identical weights
        if merged[-1][1] == weight:
            merged[-1][0] += text_part
        else:
            merged.append([text_part, weight])
    return [(text_part, weight) for text_part, weight in merged]
