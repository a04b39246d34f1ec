"""Sweep points: the scenario as it runs at each point of its sweep.

Two forms (schema.Sweep): `{param: concurrency|rate_per_s, values}` (one arrival parameter) and
`{grid: {FIELD_PATH: [values], ...}}`, the cartesian product of any workload or deployment fields.
A FIELD_PATH is `workload.<field>...`, `deployments.<field>...` (every deployment the field applies
to: speculative fields only to speculative designs, `ssd` only to SSD) or `deployments[i].<field>...`.
Every grid point is validated through the same schema; errors name `sweep.grid.PATH[i]`.
"""
from __future__ import annotations

import difflib
import itertools
import re
import types
import typing
from typing import Any

from pydantic import BaseModel, ValidationError

from simulator.config.schema import Deployment, Scenario
from simulator.config.workload_schema import Workload
from simulator.errors import SpecsimError

# Fields that only speculative deployments take (`deployments.X` skips AR designs for these).
SPECULATIVE = {"draft", "gamma", "acceptance", "draft_placement", "draft_latency", "draft_dtype",
               "draft_tp", "draft_gpus", "draft_gpu", "handshake_s", "quantization.draft"}
_INDEXED = re.compile(r"^deployments\[(\d+)\]\.(.+)$")


def _models_in(annotation) -> list[type[BaseModel]]:
    """The pydantic models an annotation can hold (through Optional, Union and Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType, typing.Annotated):
        return [m for a in typing.get_args(annotation) for m in _models_in(a)]
    return []


def _field_paths(model: type[BaseModel], prefix: str) -> set[str]:
    out = set()
    for name, info in model.model_fields.items():
        path = f"{prefix}.{name}"
        out.add(path)
        for sub in _models_in(info.annotation):
            out |= _field_paths(sub, path)
    return out


KNOWN = _field_paths(Workload, "workload") | _field_paths(Deployment, "deployments")


def _target(path: str, sc: Scenario) -> tuple[str, list[int] | None, str]:
    """(section, deployment indices or None for the workload, path inside the section); raises
    ValueError with the reason (and a 'did you mean') when the path names no sweepable field."""
    m = _INDEXED.match(path)
    generic = f"deployments.{m.group(2)}" if m else path
    if generic not in KNOWN:
        close = (sorted(k for k in KNOWN if k.startswith(generic))
                 or difflib.get_close_matches(generic, sorted(KNOWN), n=1, cutoff=0.6))
        if close and m:
            close = [close[0].replace("deployments", f"deployments[{m.group(1)}]", 1)]
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ValueError(f"unknown field path '{path}' (a workload field, deployments.FIELD or "
                         f"deployments[i].FIELD){hint}")
    section, _, inner = generic.partition(".")
    if section == "workload":
        return section, None, inner
    if inner == "name":
        raise ValueError(f"'{path}': deployment names identify the rows; sweep other fields")
    if m:
        i = int(m.group(1))
        if i >= len(sc.deployments):
            raise ValueError(f"'{path}': the scenario has {len(sc.deployments)} deployments "
                             f"(indices 0..{len(sc.deployments) - 1})")
        return section, [i], inner
    idx = [i for i, d in enumerate(sc.deployments) if _applies(inner, d)]
    if not idx:
        raise ValueError(f"'{path}' applies to no deployment of this scenario")
    return section, idx, inner


def _applies(inner: str, d: Deployment) -> bool:
    if inner.split(".")[0] == "ssd":
        return d.strategy == "ssd"
    if inner.split(".")[0] in SPECULATIVE or inner.startswith("quantization.draft"):
        return d.strategy != "ar"
    return True


def _set(data: dict, inner: str, value: Any) -> None:
    *parents, leaf = inner.split(".")
    for p in parents:
        nxt = data.get(p)
        if not isinstance(nxt, dict):
            nxt = data[p] = {}
        data = nxt
    data[leaf] = value


def _get(data: dict, inner: str) -> Any:
    for p in inner.split("."):
        data = data.get(p) if isinstance(data, dict) else None
    return data


def _apply(base: dict, targets: dict, values: dict) -> dict:
    data = {k: v for k, v in base.items() if k not in ("sweep", "compare")}
    data = _deepcopy(data)
    for path, v in values.items():
        section, idx, inner = targets[path]
        if idx is None:
            _set(data["workload"], inner, v)
        for i in idx or []:
            _set(data["deployments"][i], inner, v)
    return data


def _deepcopy(x):
    if isinstance(x, dict):
        return {k: _deepcopy(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_deepcopy(v) for v in x]
    return x


def _loc(loc: tuple) -> str:
    from simulator.config.loading import _path  # the scenario errors' paths, union tags dropped
    return _path(loc)[0]


def _value_error(path: str, i: int, value: Any, target: tuple, err: ValidationError,
                 base: dict) -> str:
    """One line: the grid value, and what the schema expected of it."""
    e = err.errors(include_url=False)[0]
    msg = e["msg"].removeprefix("Value error, ")
    section, idx, inner = target
    where = _loc(tuple(e["loc"]))
    if e["type"] == "extra_forbidden":
        parent = where.rpartition(".")[0]
        kind = _get(base, parent.removeprefix("workload.")) if idx is None else None
        msg = (f"{parent} has no such field here"
               + (f" (its {'process' if 'process' in kind else 'dist'} is "
                  f"'{kind.get('process', kind.get('dist'))}')" if isinstance(kind, dict) else ""))
    mine = {f"workload.{inner}"} if idx is None else {f"deployments[{j}].{inner}" for j in idx}
    if any(where == m or where.startswith(m + ".") or where.startswith(m + "[") for m in mine):
        return f"sweep.grid.{path}[{i}]: {msg} (got {value!r})"
    return f"sweep.grid.{path}[{i}] = {value!r} makes {where or 'the scenario'} invalid: {msg}"


def grid_points(sc: Scenario) -> list[tuple[dict, Scenario]]:
    """Every grid point as ({path: validated value}, the scenario at that point), first axis
    slowest. Raises ValueError (one line) for an unknown path or a value the schema rejects."""
    grid = sc.sweep.grid
    targets = {}
    for path in grid:
        try:
            targets[path] = _target(path, sc)
        except ValueError as e:
            raise ValueError(f"sweep.grid: {e}") from None
    base = sc.model_dump(mode="json", exclude_unset=True)
    for path, values in grid.items():  # each value alone first: the error names it
        for i, v in enumerate(values):
            try:
                Scenario.model_validate(_apply(base, targets, {path: v}))
            except ValidationError as e:
                raise ValueError(_value_error(path, i, v, targets[path], e, base["workload"])) from None
    out = []
    for combo in itertools.product(*grid.values()):
        values = dict(zip(grid, combo))
        try:
            psc = Scenario.model_validate(_apply(base, targets, values))
        except ValidationError as e:
            path = next(iter(values))
            raise ValueError(f"sweep.grid point {values}: " + _value_error(
                path, grid[path].index(values[path]), values[path], targets[path], e,
                base["workload"])) from None
        dumped = psc.model_dump(mode="json")
        point = {}
        for path, (section, idx, inner) in targets.items():
            node = dumped["workload"] if idx is None else dumped["deployments"][idx[0]]
            point[path] = _get(node, inner)
        out.append((point, psc))
    return out


def sweep_points(sc: Scenario) -> list[tuple[dict | None, Scenario]]:
    """(point, scenario at the point) for every sweep point; [(None, sc)] without a sweep."""
    if sc.sweep is None:
        return [(None, sc)]
    if sc.sweep.grid is not None:
        return grid_points(sc)
    out = []
    for v in sc.sweep.values:
        value = int(v) if sc.sweep.param == "concurrency" else float(v)
        arrival = sc.workload.arrival.model_copy(update={sc.sweep.param: value})
        wl = sc.workload.model_copy(update={"arrival": arrival})
        out.append(({sc.sweep.param: value}, sc.model_copy(update={"workload": wl})))
    return out


def check_sweep(sc: Scenario, source: str) -> None:
    """Validate every grid point; a SpecsimError naming the file and `sweep.grid.PATH[i]`."""
    if sc.sweep is not None and sc.sweep.grid is not None:
        try:
            grid_points(sc)
        except ValueError as e:
            raise SpecsimError(f"{source}: {e}") from None


def sweep_paths(sc: Scenario) -> list[str]:
    """The swept paths in order (one per requests.csv column); [] without a sweep."""
    if sc.sweep is None:
        return []
    return list(sc.sweep.grid) if sc.sweep.grid is not None else [sc.sweep.param]


def value_words(v: Any) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    return f"{v:g}"


def point_words(point: dict | None) -> str:
    """A sweep point in words: 'concurrency 32 · gamma 4' (each path's last name, the whole path
    where two paths share it)."""
    if not point:
        return ""
    short = [p.rsplit(".", 1)[-1] for p in point]
    names = [s if short.count(s) == 1 else p for s, p in zip(short, point)]
    return " · ".join(f"{n} {value_words(v)}" for n, v in zip(names, point.values()))


def point_label(point: dict | None) -> str:
    """A sweep point in tables: ' @concurrency=32' (' @PATH=VALUE' per swept path)."""
    return "".join(f" @{k}={value_words(v)}" for k, v in (point or {}).items())
