"""The X/Y/Z plot's arguments (A1111's 18 positional script_args) and the plan they make: each axis's values and
labels, the loop order (slow axes outermost) and the request of every cell."""
from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from modules.extensions.api import IMG2IMG, TXT2IMG, AppView, GenerationRequest, RequestError, ScriptArg

from .axes import Axis, axes_for, axis_index
from .values import AxisValueError, fix_seeds, join_values, parse_values, split_values

AXIS_NAMES = ("X", "Y", "Z")
SEED_AXES = ("Seed", "Var. seed")
MAX_GRID_MEGAPIXELS = 200  # A1111 img_max_size_mp
MAX_CELLS = 10_000
MAX_MARGIN = 500

# A1111 1.10 xyz_grid.py, in order: what /script-info lists and what script_args are matched against.
SCRIPT_ARGS: tuple[ScriptArg, ...] = (
    *(arg for name, default in zip(AXIS_NAMES, (1, 0, 0)) for arg in (
        ScriptArg(f"{name} type", default, minimum=0, step=1),
        ScriptArg(f"{name} values", ""),
        ScriptArg(f"{name} values", []),
    )),
    ScriptArg("Draw legend", True),
    ScriptArg("Include Sub Images", False),
    ScriptArg("Include Sub Grids", False),
    ScriptArg("Keep -1 for seeds", False),
    ScriptArg("Vary seeds for X", False),
    ScriptArg("Vary seeds for Y", False),
    ScriptArg("Vary seeds for Z", False),
    ScriptArg("Grid margins (px)", 0, minimum=0, maximum=MAX_MARGIN, step=2),
    ScriptArg("Use text inputs instead of dropdowns", False),
)


@dataclass(frozen=True)
class AxisArgs:
    type: int | str  # index into the tab's axis list (A1111), or an axis label
    text: str = ""
    chosen: tuple[str, ...] = ()  # the values dropdown (axes with choices)


@dataclass(frozen=True)
class XyzArgs:
    axes: tuple[AxisArgs, AxisArgs, AxisArgs]
    draw_legend: bool = True
    include_lone_images: bool = False
    include_sub_grids: bool = False
    no_fixed_seeds: bool = False
    vary_seeds: tuple[bool, bool, bool] = (False, False, False)
    margin_size: int = 0
    csv_mode: bool = False


@dataclass(frozen=True)
class ResolvedAxis:
    name: str  # "X", "Y" or "Z"
    axis: Axis
    values: list[Any]
    labels: list[str]
    text: str  # the values as the user wrote them (infotext "X Values")

    @property
    def used(self) -> bool:
        return self.axis.label != "Nothing"


@dataclass(frozen=True)
class Cell:
    ix: int
    iy: int
    iz: int


# --------------------------------------------------------------------------------------------- arguments


def _flag(label: str, value: Any, default: bool) -> bool:
    if value is None:
        return default
    if isinstance(value, bool) or (isinstance(value, int) and value in (0, 1)):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise RequestError(f"{label} must be true or false, got {value!r}")


def _axis_type(label: str, value: Any, default: int) -> int | str:
    if value is None or value == "":
        return default
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    if (isinstance(value, int) and not isinstance(value, bool)) or isinstance(value, str):
        return value
    raise RequestError(f"{label} must be an axis index (or label), got {value!r}")


def _text(label: str, value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, (list, tuple)):
        return join_values([str(item) for item in value])
    if not isinstance(value, str):
        raise RequestError(f"{label} must be text, got {value!r}")
    return value


def _chosen(label: str, value: Any) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        return tuple(split_values(value))
    if isinstance(value, (list, tuple)) and all(isinstance(item, (str, int, float)) for item in value):
        return tuple(str(item) for item in value)
    raise RequestError(f"{label} must be a list of values, got {value!r}")


def parse_xyz_args(values: Sequence[Any]) -> XyzArgs:
    """A1111's positional script_args; missing trailing ones (or None) keep the UI defaults."""
    if len(values) > len(SCRIPT_ARGS):
        raise RequestError(f"X/Y/Z plot takes {len(SCRIPT_ARGS)} script_args, got {len(values)}")
    given = list(values) + [None] * (len(SCRIPT_ARGS) - len(values))
    axes = tuple(AxisArgs(_axis_type(f"{name} type", given[3 * i], (1, 0, 0)[i]),
                          _text(f"{name} values", given[3 * i + 1]),
                          _chosen(f"{name} values (dropdown)", given[3 * i + 2]))
                 for i, name in enumerate(AXIS_NAMES))
    flags = [_flag(arg.label, value, arg.value) for arg, value in zip(SCRIPT_ARGS[9:16], given[9:16])]
    margin = SCRIPT_ARGS[16].check(given[16])
    return XyzArgs(axes, draw_legend=flags[0], include_lone_images=flags[1], include_sub_grids=flags[2],
                   no_fixed_seeds=flags[3], vary_seeds=(flags[4], flags[5], flags[6]), margin_size=int(margin),
                   csv_mode=_flag(SCRIPT_ARGS[17].label, given[17], False))


# ------------------------------------------------------------------------------------------------- axes


def tab_of(request: GenerationRequest) -> str:
    return IMG2IMG if request.img2img is not None else TXT2IMG


def pick_axis(name: str, chosen: int | str, tab: str) -> Axis:
    axes = axes_for(tab)
    index = axis_index(tab, chosen) if isinstance(chosen, str) else chosen
    if not 0 <= index < len(axes):
        raise RequestError(f"{name} type {chosen!r} is not an axis type of {tab} (0..{len(axes) - 1})")
    axis = axes[index]
    if not axis.supported_in(tab):
        supported = ", ".join(f"{i} {a.label}" for i, a in enumerate(axes) if a.supported_in(tab))
        raise RequestError(f"X/Y/Z plot: the {name} axis type {axis.label!r} is not supported by this server; "
                           f"supported: {supported}")
    return axis


def resolve_axis(name: str, given: AxisArgs, request: GenerationRequest, app: AppView, *, csv_mode: bool,
                 fix: bool) -> ResolvedAxis:
    axis = pick_axis(name, given.type, tab_of(request))
    if axis.label == "Nothing":
        return ResolvedAxis(name, axis, [None], [""], "")
    chosen = list(given.chosen) if axis.choices is not None and not csv_mode and given.chosen else None
    text = join_values(chosen) if chosen else given.text
    try:
        values = parse_values(axis.kind, given.text, chosen)
    except AxisValueError as error:
        raise RequestError(f"X/Y/Z plot {name} values ({axis.label}): {error}") from None
    if not values:
        raise RequestError(f"X/Y/Z plot: {name} values are empty for the axis {axis.label!r}")
    if axis.resolve is not None:
        values = axis.resolve(values, app)
    if axis.label == "Prompt S/R" and values[0] not in request.prompt and values[0] not in request.negative_prompt:
        raise RequestError(f"Prompt S/R did not find {values[0]!r} in the prompt or the negative prompt")
    if axis.label in SEED_AXES and fix:
        values = fix_seeds(values)
    return ResolvedAxis(name, axis, values, [axis.format(value) for value in values], text)


# ------------------------------------------------------------------------------------------------- plan


def loop_order(costs: Sequence[float]) -> tuple[int, int, int]:
    """Axis numbers (0 X, 1 Y, 2 Z) from the outermost loop in: A1111's rule, so the most expensive axis to switch
    (checkpoint, then VAE) changes least often; on ties Z, then Y, is outermost."""
    x, y, z = costs
    first, second = 2, 1
    if x > y and x > z:
        first, second = 0, (1 if y > z else 2)
    elif y > x and y > z:
        first, second = 1, (0 if x > z else 2)
    elif z > x and z > y:
        first, second = 2, (0 if x > y else 1)
    return first, second, 3 - first - second


@dataclass(frozen=True)
class Plan:
    axes: tuple[ResolvedAxis, ResolvedAxis, ResolvedAxis]
    base: GenerationRequest  # seeds fixed unless "Keep -1 for seeds"
    args: XyzArgs

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(len(axis.values) for axis in self.axes)  # type: ignore[return-value]

    @property
    def cell_count(self) -> int:
        nx, ny, nz = self.shape
        return nx * ny * nz

    def index(self, cell: Cell) -> int:
        """Position in the image list: X fastest, then Y, then Z (A1111)."""
        nx, ny, _ = self.shape
        return cell.ix + cell.iy * nx + cell.iz * nx * ny

    def cells(self) -> Iterator[Cell]:
        """Every cell in processing order (the costliest axis in the outermost loop)."""
        order = loop_order([axis.axis.cost for axis in self.axes])
        sizes = self.shape
        for outer in range(sizes[order[0]]):
            for middle in range(sizes[order[1]]):
                for inner in range(sizes[order[2]]):
                    position = [0, 0, 0]
                    position[order[0]], position[order[1]], position[order[2]] = outer, middle, inner
                    yield Cell(*position)

    def request_for(self, cell: Cell) -> GenerationRequest:
        """The base request with X, then Y, then Z applied, and the seed varied where asked (A1111)."""
        request = self.base
        for axis, position in zip(self.axes, (cell.ix, cell.iy, cell.iz)):
            request = axis.axis.apply(request, axis.values[position], axis.values)  # type: ignore[misc]
        nx, ny, _ = self.shape
        vary_x, vary_y, vary_z = self.args.vary_seeds
        x_span, y_span = (nx if vary_x else 1), (ny if vary_y else 1)
        offset = (cell.ix if vary_x else 0) + (cell.iy * x_span if vary_y else 0) + \
            (cell.iz * x_span * y_span if vary_z else 0)
        return request.replace(seed=request.seed + offset) if offset else request


def fixed_base(request: GenerationRequest, keep_random: bool) -> GenerationRequest:
    """A1111 fix_seed: -1 seeds become one random seed for the whole grid (so cells differ only by their axes)."""
    if keep_random:
        return request
    seed, subseed = fix_seeds([request.seed, request.subseed], random.randrange)
    return request.replace(seed=seed, subseed=subseed)


def make_plan(request: GenerationRequest, args: XyzArgs, app: AppView) -> Plan:
    """Resolve and check everything before any job runs: a bad value is a RequestError (HTTP 422)."""
    fix = not args.no_fixed_seeds
    axes = tuple(resolve_axis(name, given, request, app, csv_mode=args.csv_mode, fix=fix)
                 for name, given in zip(AXIS_NAMES, args.axes))
    plan = Plan(axes, fixed_base(request, args.no_fixed_seeds), args)  # type: ignore[arg-type]
    if plan.cell_count > MAX_CELLS:
        raise RequestError(f"X/Y/Z plot would run {plan.cell_count} jobs; at most {MAX_CELLS}")
    cells = [plan.request_for(cell) for cell in plan.cells()]
    for cell_request in cells:
        cell_request.validate()  # every cell's request is runnable before the first one starts
    megapixels = sum(cell.width * cell.height for cell in cells) / 1_000_000
    if megapixels > MAX_GRID_MEGAPIXELS:
        raise RequestError(f"the grid would be {megapixels:.0f} megapixels; at most {MAX_GRID_MEGAPIXELS}")
    return plan


def grid_params(plan: Plan, names: Sequence[str]) -> dict[str, str]:
    """The infotext keys A1111 adds to a grid: Script, and per used axis its type, values and fixed seeds."""
    params = {"Script": "X/Y/Z plot"}
    for axis in plan.axes:
        if axis.name not in names or not axis.used:
            continue
        params[f"{axis.name} Type"] = axis.axis.label
        params[f"{axis.name} Values"] = axis.text
        if axis.axis.label in SEED_AXES and not plan.args.no_fixed_seeds:
            params[f"Fixed {axis.name} Values"] = ", ".join(str(value) for value in axis.values)
    return params
