"""Loading scenario files: YAML into the schema, with errors users can act on.

Errors name the file, the field path (as in `deployments[1].scheduler.max_num_seqs`) and what
was expected; the CLI prints them and exits 2.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from simulator.config.schema import Scenario
from simulator.config.sweep import check_sweep
from simulator.config.workload_schema import Strict
from simulator.errors import SpecsimError, did_you_mean
from simulator.user_files import load_user_yaml


# ---- loading ----------------------------------------------------------------------------------
# Fields whose value is a union: pydantic puts the branch tag after them in error locations.
_UNION_FIELDS = {"arrival", "prompt_tokens", "output_tokens", "target", "draft", "gpu", "draft_gpu",
                 "gamma"}


def _path(loc: tuple) -> tuple[str, str | None]:
    """User-facing field path, and the union branch the error belongs to (if any)."""
    out, branch, skip = "", None, False
    for part in loc:
        if skip:
            skip, branch = False, str(part)
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
            skip = part in _UNION_FIELDS
    return out or "(top level)", branch


def _schema_keys() -> set[str]:
    """Every key any section of the scenario schema takes (for 'did you mean')."""
    keys, todo = set(), [Strict]
    while todo:
        cls = todo.pop()
        keys.update(cls.model_fields)
        todo.extend(cls.__subclasses__())
    return keys


def format_validation_error(source: str, err: ValidationError) -> str:
    lines, seen = [], set()
    for e in err.errors(include_url=False):
        path, branch = _path(tuple(e["loc"]))
        inp = e.get("input")
        # A union field reports one error per branch; keep the branch the user meant.
        if branch == "str" and isinstance(inp, dict):
            continue
        if branch in ("InlineModel", "InlineGPU") and isinstance(inp, str):
            if e["type"] in ("model_type", "dict_type"):
                continue
        if e["type"] == "extra_forbidden":
            hint = did_you_mean(e["loc"][-1], _schema_keys())
            msg = (f"unknown key{hint}" if hint else
                   "unknown key (check its spelling and the scenario reference in README.md)")
        elif e["type"] == "missing":
            msg = "required key is missing"
        else:
            msg = e["msg"].removeprefix("Value error, ")
            if "input" in e and not isinstance(e["input"], (dict, list)):
                msg += f" (got {e['input']!r})"
        if (path, msg) not in seen:
            seen.add((path, msg))
            lines.append(f"{source}: {path}: {msg}")
    return "\n".join(lines)  # one line per mistake


def validate_file(model, data: Any, source: str):
    """A user file's parsed content validated as `model` (scenario, plan): one line per mistake,
    each naming the file and the field."""
    if not isinstance(data, dict):
        raise SpecsimError(f"{source}: expected a YAML mapping at the top level, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise SpecsimError(format_validation_error(source, e)) from None


def parse_scenario(data: Any, source: str = "<scenario>") -> Scenario:
    sc = validate_file(Scenario, data, source)
    check_sweep(sc, source)
    return sc


def file_kind(data: Any) -> str | None:
    """'plan' for a mapping with a `search:` section and no `deployments:`, 'scenario' for the
    converse, None otherwise (left to validation to name what is wrong)."""
    if isinstance(data, dict) and ("search" in data) != ("deployments" in data):
        return "plan" if "search" in data else "scenario"
    return None


_COMMAND = {"plan": "specsim plan", "scenario": "specsim run"}


def read_user_file(path: str | Path, kind: str) -> tuple[Any, Path]:
    """The parsed YAML of a `kind` ('scenario' or 'plan') file, and its path: one line when the
    file is missing or is the other kind (with the command that takes it)."""
    p = Path(path)
    if not p.is_file():
        raise SpecsimError(f"{p}: {kind} file not found")
    data = load_user_yaml(p, f"{kind} file")
    found = file_kind(data)
    if found not in (None, kind):
        raise SpecsimError(f"{p}: this is a {found} file, not a {kind} file; run "
                           f"`{_COMMAND[found]} {p}`")
    return data, p


def load_scenario(path: str | Path) -> tuple[Scenario, Path]:
    """Parse and validate a scenario file; returns it with the directory relative paths resolve against."""
    data, p = read_user_file(path, "scenario")
    return parse_scenario(data, str(p)), p.parent
