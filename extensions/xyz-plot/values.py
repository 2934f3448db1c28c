"""A1111's X/Y/Z value syntax: comma-separated values (CSV quoting), integer and float ranges.

    "1, 2, 5"          the values as written (quote a value that holds a comma: `"a, b", c`)
    "1-5"              1, 2, 3, 4, 5 (end included)
    "1-5 (+2)"         1, 3, 5 (step; negative steps count down: "10-1 (-3)" = 10, 7, 4)
    "1-10 [5]"         5 values evenly spaced from 1 to 10, inclusive: 1, 3, 5, 7, 10 (ints truncated)
    "0.5-1.5 (+0.25)"  floats the same way; "0.5-1 [3]" = 0.5, 0.75, 1.0
Ranges and lists mix: "1-3, 10" = 1, 2, 3, 10.
"""
from __future__ import annotations

import csv
import io
import math
import random
import re
from collections.abc import Callable
from itertools import permutations
from typing import Any

MAX_AXIS_VALUES = 1000  # a typo like "1-1000000" must not queue a million jobs
RANDOM_SEED_LIMIT = 4294967294  # A1111: random seeds are drawn from [0, 2^32 - 2)

_INT = r"[+-]?\s*\d+"
_FLOAT = r"[+-]?\s*\d+(?:\.\d*)?"
# Same shapes as A1111's re_range / re_range_count (and the float variants).
RANGE_STEP_INT = re.compile(rf"\s*({_INT})\s*-\s*({_INT})(?:\s*\(([+-]\d+)\s*\))?\s*")
RANGE_COUNT_INT = re.compile(rf"\s*({_INT})\s*-\s*({_INT})(?:\s*\[(\d+)\s*\])?\s*")
RANGE_STEP_FLOAT = re.compile(rf"\s*({_FLOAT})\s*-\s*({_FLOAT})(?:\s*\(([+-]\d+(?:\.\d*)?)\s*\))?\s*")
RANGE_COUNT_FLOAT = re.compile(rf"\s*({_FLOAT})\s*-\s*({_FLOAT})(?:\s*\[(\d+(?:\.\d*)?)\s*\])?\s*")


class AxisValueError(ValueError):
    """Values that do not parse or do not fit the axis; the message names the axis and the value."""


def split_values(text: str) -> list[str]:
    """A1111 csv_string_to_list_strip: CSV fields over every line, stripped, empty ones dropped."""
    rows = csv.reader(io.StringIO(text or ""), skipinitialspace=True)
    return [field.strip() for row in rows for field in row if field.strip()]


def join_values(values: list[str]) -> str:
    """The inverse of split_values (A1111 list_to_csv_string), for infotexts and the text box."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow(values)
    return buffer.getvalue()


def _number(text: str) -> str:
    return text.replace(" ", "")


def linspace(start: float, stop: float, count: int) -> list[float]:
    """numpy.linspace(start, stop, count) with both ends included."""
    if count <= 1:
        return [start] if count == 1 else []
    step = (stop - start) / (count - 1)
    return [start + step * index for index in range(count - 1)] + [stop]


def arange(start: float, stop: float, step: float) -> list[float]:
    """numpy.arange(start, stop, step): ceil((stop - start) / step) values, stop excluded."""
    if step == 0:
        raise AxisValueError("a range step cannot be 0")
    count = max(math.ceil((stop - start) / step), 0)
    _check_count(count)
    return [start + step * index for index in range(count)]


def _check_count(count: int) -> None:
    if count > MAX_AXIS_VALUES:
        raise AxisValueError(f"a range gives {count} values; an axis takes at most {MAX_AXIS_VALUES}")


def expand_ints(items: list[str]) -> list[int]:
    values: list[int] = []
    for item in items:
        step_match, count_match = RANGE_STEP_INT.fullmatch(item), RANGE_COUNT_INT.fullmatch(item)
        if step_match is not None:
            start, end = int(_number(step_match.group(1))), int(_number(step_match.group(2)))
            step = int(step_match.group(3)) if step_match.group(3) else 1
            if step == 0:
                raise AxisValueError(f"{item!r}: a range step cannot be 0")
            span = range(start, end + 1, step)  # A1111 adds 1 to the end whatever the step's sign
            _check_count(len(span))
            values += list(span)
        elif count_match is not None:
            start, end = int(_number(count_match.group(1))), int(_number(count_match.group(2)))
            count = int(count_match.group(3)) if count_match.group(3) else 1
            _check_count(count)
            values += [int(value) for value in linspace(start, end, count)]
        else:
            values.append(_to_int(item))
    return values


def expand_floats(items: list[str]) -> list[float]:
    values: list[float] = []
    for item in items:
        step_match, count_match = RANGE_STEP_FLOAT.fullmatch(item), RANGE_COUNT_FLOAT.fullmatch(item)
        if step_match is not None:
            start, end = float(_number(step_match.group(1))), float(_number(step_match.group(2)))
            step = float(step_match.group(3)) if step_match.group(3) else 1.0
            values += arange(start, end + step, step)  # A1111: np.arange(start, end + step, step)
        elif count_match is not None:
            start, end = float(_number(count_match.group(1))), float(_number(count_match.group(2)))
            count = int(float(count_match.group(3))) if count_match.group(3) else 1
            _check_count(count)
            values += linspace(start, end, count)
        else:
            values.append(_to_float(item))
    return values


def _to_int(text: str) -> int:
    try:
        return int(_number(text))
    except ValueError:
        raise AxisValueError(f"{text!r} is not a whole number") from None


def _to_float(text: str) -> float:
    try:
        value = float(_number(text))
    except ValueError:
        raise AxisValueError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise AxisValueError(f"{text!r} is not a finite number")
    return value


def parse_values(kind: str, text: str, chosen: list[str] | None = None) -> list[Any]:
    """One axis's values of `kind` ("int", "float", "str" or "permutation") from its text (or, for axes with a
    choice list, the dropdown's selection when it is not empty)."""
    items = [str(item).strip() for item in chosen if str(item).strip()] if chosen else split_values(text)
    if kind == "int":
        values: list[Any] = expand_ints(items)
    elif kind == "float":
        values = expand_floats(items)
    elif kind == "permutation":
        if len(items) > 6:
            raise AxisValueError("Prompt order takes at most 6 values (720 orders)")
        values = [list(order) for order in permutations(items)]
    else:
        values = items
    _check_count(len(values))
    return values


def fix_seeds(values: list[int], draw: Callable[[int], int] = random.randrange) -> list[int]:
    """A1111 fix_axis_seeds: -1 becomes a random seed, so the grid's infotext can name the seeds it used."""
    return [draw(RANDOM_SEED_LIMIT) if value == -1 else value for value in values]


def format_number(value: Any) -> str:
    """Labels: floats rounded to 8 places (A1111), ints as they are."""
    return str(round(value, 8)) if isinstance(value, float) else str(value)
