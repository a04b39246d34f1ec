"""Reading the files users hand the tool (scenario YAML, trace and profile CSVs, profile and
calibration JSON): UTF-8 text with or without a byte-order mark, and one clear SpecsimError
naming the file for bad bytes, too-deep nesting or a key given twice, never a traceback.

Like errors.py it sits below every layer: any package may read user files through it.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from simulator.errors import SpecsimError

# A scenario is about six levels deep; a few dozen is any honest file. Past this, PyYAML and
# json recurse once per level and would hit Python's recursion limit (RecursionError).
MAX_DEPTH = 100


def read_user_text(path: Path | str, what: str = "file") -> str:
    """The file's text: UTF-8, a leading BOM dropped ("utf-8-sig")."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise SpecsimError(f"{p}: {what} not found") from None
    except OSError as e:
        raise SpecsimError(f"{p}: cannot read {what} ({e.strerror or e})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise SpecsimError(f"{p}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset "
                           f"{e.start}); save the {what} as UTF-8") from None


def _depth_ok(text: str) -> bool:
    """A cheap upper bound on bracket nesting (flow style) so that deep documents are refused
    before the parser recurses; indentation nesting is bounded by the line count check below."""
    depth = top = 0
    for ch in text:
        if ch in "[{":
            depth += 1
            top = max(top, depth)
        elif ch in "]}":
            depth -= 1
    return top <= MAX_DEPTH


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a mapping key given twice (PyYAML keeps the last silently)."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False):
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`: explicit keys override
            continue
        key = loader.construct_object(key_node, deep=deep)
        try:
            first = seen.get(key)
        except TypeError:  # an unhashable key: the base constructor words that error
            break
        if first is not None:
            raise SpecsimError(f"line {key_node.start_mark.line + 1}: key '{key}' appears twice "
                               f"(first on line {first}); give it once")
        seen[key] = key_node.start_mark.line + 1
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _too_deep(p: Path) -> SpecsimError:
    return SpecsimError(f"{p}: nested more than {MAX_DEPTH} levels deep; a scenario is about 6")


def _load_user(path: Path | str, what: str, parse, invalid: type, kind: str) -> Any:
    """Parse a user file with `parse`: UTF-8, bounded nesting, one line naming the file for a
    parse error (`invalid`), a SpecsimError raised while parsing, or nesting too deep."""
    p = Path(path)
    text = read_user_text(p, what)
    if not _depth_ok(text):
        raise _too_deep(p)
    try:
        return parse(text)
    except SpecsimError as e:
        raise SpecsimError(f"{p}: {e}") from None
    except invalid as e:
        raise SpecsimError(f"{p}: not valid {kind}: {' '.join(str(e).split())}") from None
    except RecursionError:
        raise _too_deep(p) from None


def load_user_yaml(path: Path | str, what: str = "scenario file") -> Any:
    """Parse a YAML file strictly: UTF-8, no duplicated keys, bounded nesting."""
    return _load_user(path, what, lambda text: yaml.load(text, Loader=_UniqueKeyLoader),  # noqa: S506
                      yaml.YAMLError, "YAML")


def load_user_json(path: Path | str, what: str = "JSON file") -> Any:
    """Parse a JSON file: UTF-8, bounded nesting (callers check non-finite numbers per key)."""
    return _load_user(path, what, json.loads, json.JSONDecodeError, "JSON")
