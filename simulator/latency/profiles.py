"""The measured-profile format: dataclasses, writer, validating loader, and lookup by (gpu, model, tp).

A profile is a pair `profiles/<gpu>/<model>/tp<k>.csv` + `tp<k>.json` (format version 1).
CSV columns, exactly: op,batch,q,ctx,tokens,median_s,p10_s,p90_s,samples. Times are seconds,
for ONE layer where the op is per layer. Ops:
  non_attention (over `tokens` = total query tokens; batch = q = ctx = 0),
  attention (`batch` sequences of `q` query tokens over `ctx` cached tokens; tokens = batch * q),
  embedding, lm_head (over `tokens` positions), allreduce (tokens x hidden values across tp GPUs),
  forward (optional whole-model pass at (batch, q, ctx), for validation),
  op:<name> (optional per-operator breakdown of the point with the same key).
The JSON sidecar holds the metadata keys in SIDECAR_KEYS, all required, none other allowed.

Every problem found while loading raises SpecsimError naming the file, the row (CSV line number)
or key, and what was expected.
"""
from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from simulator.errors import SpecsimError
from simulator.user_files import load_user_json, read_user_text

FORMAT_VERSION = 1
CSV_COLUMNS = ("op", "batch", "q", "ctx", "tokens", "median_s", "p10_s", "p90_s", "samples")
INT_COLUMNS = ("batch", "q", "ctx", "tokens", "samples")
TIME_COLUMNS = ("median_s", "p10_s", "p90_s")
OPS = ("non_attention", "attention", "embedding", "lm_head", "allreduce", "forward")
BREAKDOWN_PREFIX = "op:"
SIDECAR_KEYS = ("format_version", "model", "tp", "dtype", "device", "gpu", "attention_backend",
                "mode", "date", "grid", "command", "specsim_version", "step_overhead_s",
                "forward_overhead_s", "source", "notes")
DEVICE_KEYS = ("name", "memory_bytes", "driver", "cuda", "torch")
MODES = ("eager", "cuda_graphs")
PROFILE_SOURCES = ("specsim-profiler", "vidur-import")
DTYPES = ("fp32", "bf16", "fp16", "fp8")
_TP_FILE = re.compile(r"^tp(\d+)$")


@dataclass(frozen=True)
class ProfileRow:
    """One measured point (see the module docstring for what each op's key columns mean)."""

    op: str
    batch: int
    q: int
    ctx: int
    tokens: int
    median_s: float
    p10_s: float
    p90_s: float
    samples: int

    @property
    def key(self) -> tuple[str, int, int, int, int]:
        return (self.op, self.batch, self.q, self.ctx, self.tokens)


@dataclass
class ProfileMeta:
    """The JSON sidecar. `device` has the keys in DEVICE_KEYS (null where not applicable)."""

    model: str
    tp: int
    dtype: str
    device: dict
    gpu: str
    attention_backend: str
    mode: str
    date: str
    grid: dict | str
    command: str
    specsim_version: str
    step_overhead_s: float | None
    forward_overhead_s: float | None
    source: str
    notes: dict | str = ""
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: d[k] for k in SIDECAR_KEYS}


@dataclass
class Profile:
    """A loaded (or about to be written) profile: metadata plus rows."""

    meta: ProfileMeta
    rows: list[ProfileRow]
    csv_path: Path | None = field(default=None, compare=False)

    def select(self, op: str) -> list[ProfileRow]:
        return [r for r in self.rows if r.op == op]

    def table(self, op: str) -> dict[str, np.ndarray]:
        """The rows of `op` as numpy columns (for the latency backend and reports)."""
        rows = self.select(op)
        cols = {c: np.array([getattr(r, c) for r in rows],
                            dtype=float if c in TIME_COLUMNS else np.int64)
                for c in CSV_COLUMNS[1:]}
        return cols


def profile_paths(root: Path | str, gpu: str, model: str, tp: int) -> tuple[Path, Path]:
    """Where the profile of (gpu, model, tp) lives under `root`: (csv, json)."""
    base = Path(root) / gpu / model / f"tp{tp}"
    return base.with_suffix(".csv"), base.with_suffix(".json")


def find_profile(gpu_name: str, model_name: str, tp: int, root: Path | str = Path("profiles")) -> Path | None:
    """The CSV path of the profile of (gpu, model, tp) under `root`, or None if there is none.

    A CSV without its sidecar (or the reverse) is an error, not a silent miss.
    """
    csv_path, json_path = profile_paths(root, gpu_name, model_name, tp)
    if csv_path.exists() and json_path.exists():
        return csv_path
    if csv_path.exists() or json_path.exists():
        have, missing = (csv_path, json_path) if csv_path.exists() else (json_path, csv_path)
        raise SpecsimError(f"{have}: profile is incomplete, its pair {missing.name} is missing")
    return None


def _fmt_time(x: float) -> str:
    return repr(float(x))


def write_profile(profile: Profile, root: Path | str = Path("profiles")) -> Path:
    """Validate and write `profile` under root/<gpu>/<model>/tp<k>.{csv,json}; return the CSV path."""
    m = profile.meta
    _check_meta(m.to_dict(), f"profile being written for {m.gpu}/{m.model}/tp{m.tp}")
    csv_path, json_path = profile_paths(root, m.gpu, m.model, m.tp)
    where = str(csv_path)
    seen: set = set()
    for i, r in enumerate(profile.rows, start=2):
        _check_row(r, where, i, seen)
    _check_ops_present(profile.rows, where)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with csv_path.open("w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(CSV_COLUMNS)
        for r in profile.rows:
            w.writerow([r.op, r.batch, r.q, r.ctx, r.tokens, _fmt_time(r.median_s),
                        _fmt_time(r.p10_s), _fmt_time(r.p90_s), r.samples])
    json_path.write_text(json.dumps(m.to_dict(), indent=2, sort_keys=False) + "\n")
    profile.csv_path = csv_path
    return csv_path


def load_profile(path: Path | str, *, model: str | None = None, tp: int | None = None,
                 gpu: str | None = None) -> Profile:
    """Load and validate a profile from its CSV or JSON path (the pair must both exist).

    `model`, `tp` and `gpu`, when given, must match the sidecar. The sidecar must also agree with
    the file's place in the layout: tp<k> in the file name, <model>/<gpu> as the parent folders.
    """
    path = Path(path)
    if path.suffix not in (".csv", ".json"):
        raise SpecsimError(f"{path}: expected a profile .csv or .json file")
    csv_path, json_path = path.with_suffix(".csv"), path.with_suffix(".json")
    for p in (csv_path, json_path):
        if not p.is_file():
            raise SpecsimError(f"{p}: profile file not found (a profile is a .csv plus a .json sidecar)")
    meta = _load_meta(json_path)
    jp = str(json_path)
    if model is not None and meta.model != model:
        raise SpecsimError(f"{jp}: key 'model' is {meta.model!r}, expected {model!r}")
    if tp is not None and meta.tp != tp:
        raise SpecsimError(f"{jp}: key 'tp' is {meta.tp}, expected {tp}")
    if gpu is not None and meta.gpu != gpu:
        raise SpecsimError(f"{jp}: key 'gpu' is {meta.gpu!r}, expected {gpu!r}")
    m = _TP_FILE.match(json_path.stem)
    if m and int(m.group(1)) != meta.tp:
        raise SpecsimError(f"{jp}: key 'tp' is {meta.tp} but the file name says tp{m.group(1)}")
    if json_path.parent.name != meta.model:
        raise SpecsimError(f"{jp}: key 'model' is {meta.model!r} but the profile sits in folder "
                           f"{json_path.parent.name!r} (expected <gpu>/<model>/tp<k>.json)")
    if json_path.parent.parent.name != meta.gpu:
        raise SpecsimError(f"{jp}: key 'gpu' is {meta.gpu!r} but the profile sits under folder "
                           f"{json_path.parent.parent.name!r} (expected <gpu>/<model>/tp<k>.json)")
    rows = _load_rows(csv_path)
    return Profile(meta=meta, rows=rows, csv_path=csv_path)


def _load_meta(json_path: Path) -> ProfileMeta:
    d = load_user_json(json_path, "profile sidecar")
    if not isinstance(d, dict):
        raise SpecsimError(f"{json_path}: expected a JSON object with keys {', '.join(SIDECAR_KEYS)}")
    _check_meta(d, str(json_path))
    return ProfileMeta(**d)


def _check_keys(d: dict, keys, where: str, what: str) -> None:
    """Exactly `keys` in `d`: missing and unknown keys are errors naming them."""
    missing = [k for k in keys if k not in d]
    if missing:
        raise SpecsimError(f"{where}: missing {what} key(s) {', '.join(map(repr, missing))}")
    unknown = [k for k in d if k not in keys]
    if unknown:
        raise SpecsimError(f"{where}: unknown {what} key(s) {', '.join(map(repr, unknown))}; "
                           f"expected only {', '.join(keys)}")


def _check_meta(d: dict, where: str) -> None:
    _check_keys(d, SIDECAR_KEYS, where, "sidecar")
    if d["format_version"] != FORMAT_VERSION or isinstance(d["format_version"], bool):
        raise SpecsimError(f"{where}: key 'format_version' is {d['format_version']!r}, "
                           f"expected {FORMAT_VERSION}")
    for k in ("model", "gpu", "dtype", "attention_backend", "mode", "date", "command",
              "specsim_version", "source"):
        if not isinstance(d[k], str) or not d[k]:
            raise SpecsimError(f"{where}: key {k!r} is {d[k]!r}, expected a non-empty string")
    if not isinstance(d["tp"], int) or isinstance(d["tp"], bool) or d["tp"] < 1:
        raise SpecsimError(f"{where}: key 'tp' is {d['tp']!r}, expected an integer >= 1")
    if d["dtype"] not in DTYPES:
        raise SpecsimError(f"{where}: key 'dtype' is {d['dtype']!r}, expected one of {', '.join(DTYPES)}")
    if d["mode"] not in MODES:
        raise SpecsimError(f"{where}: key 'mode' is {d['mode']!r}, expected one of {', '.join(MODES)}")
    if d["source"] not in PROFILE_SOURCES:
        raise SpecsimError(f"{where}: key 'source' is {d['source']!r}, "
                           f"expected one of {', '.join(PROFILE_SOURCES)}")
    dev = d["device"]
    if not isinstance(dev, dict):
        raise SpecsimError(f"{where}: key 'device' must be an object with keys {', '.join(DEVICE_KEYS)}")
    _check_keys(dev, DEVICE_KEYS, where, "device")
    if not isinstance(dev["name"], str) or not dev["name"]:
        raise SpecsimError(f"{where}: key 'device.name' is {dev['name']!r}, expected a non-empty string")
    mem = dev["memory_bytes"]
    if mem is not None and (not isinstance(mem, (int, float)) or isinstance(mem, bool) or mem <= 0):
        raise SpecsimError(f"{where}: key 'device.memory_bytes' is {mem!r}, expected a positive number or null")
    for k in ("step_overhead_s", "forward_overhead_s"):
        v = d[k]
        if v is None:
            continue
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
            raise SpecsimError(f"{where}: key {k!r} is {v!r}, expected a finite number >= 0 or null")
    if not isinstance(d["grid"], (dict, str)):
        raise SpecsimError(f"{where}: key 'grid' must be an object or a string")
    if not isinstance(d["notes"], (dict, str, list)):
        raise SpecsimError(f"{where}: key 'notes' must be an object, a list or a string")


def _load_rows(csv_path: Path) -> list[ProfileRow]:
    where = str(csv_path)
    with io.StringIO(read_user_text(csv_path, "profile CSV"), newline="") as f:
        reader = csv.reader(f)
        try:
            header = next(reader)
        except StopIteration:
            raise SpecsimError(f"{where}: empty file, expected the header {','.join(CSV_COLUMNS)}") from None
        header = [h.strip() for h in header]
        missing = [c for c in CSV_COLUMNS if c not in header]
        if missing:
            raise SpecsimError(f"{where}: line 1: missing column(s) {', '.join(missing)}; "
                               f"expected exactly {','.join(CSV_COLUMNS)}")
        if tuple(header) != CSV_COLUMNS:
            raise SpecsimError(f"{where}: line 1: header is {','.join(header)}, "
                               f"expected exactly {','.join(CSV_COLUMNS)}")
        rows: list[ProfileRow] = []
        seen: set = set()
        for cells in reader:
            line = reader.line_num
            if not cells or all(not c.strip() for c in cells):
                continue
            if len(cells) != len(CSV_COLUMNS):
                raise SpecsimError(f"{where}: line {line}: {len(cells)} fields, expected {len(CSV_COLUMNS)}")
            vals: dict = {"op": cells[0].strip()}
            for col, raw in zip(CSV_COLUMNS[1:], cells[1:]):
                raw = raw.strip()
                if col in INT_COLUMNS:
                    try:
                        vals[col] = int(raw)
                    except ValueError:
                        raise SpecsimError(f"{where}: line {line}, column {col!r}: {raw!r} is not an "
                                           f"integer") from None
                else:
                    try:
                        vals[col] = float(raw)
                    except ValueError:
                        raise SpecsimError(f"{where}: line {line}, column {col!r}: {raw!r} is not a "
                                           f"number (expected seconds > 0)") from None
            row = ProfileRow(**vals)
            _check_row(row, where, line, seen)
            rows.append(row)
    _check_ops_present(rows, where)
    return rows


def _check_row(r: ProfileRow, where: str, line: int, seen: set) -> None:
    at = f"{where}: line {line}"
    if r.op not in OPS and not (r.op.startswith(BREAKDOWN_PREFIX) and len(r.op) > len(BREAKDOWN_PREFIX)):
        raise SpecsimError(f"{at}, column 'op': {r.op!r} is not one of {', '.join(OPS)} "
                           f"or '{BREAKDOWN_PREFIX}<operator>'")
    for col in TIME_COLUMNS:
        v = getattr(r, col)
        if not math.isfinite(v) or v <= 0:
            raise SpecsimError(f"{at}, column {col!r}: {v!r} is not a finite time > 0 seconds")
    if not r.p10_s <= r.median_s * (1 + 1e-9) or not r.median_s <= r.p90_s * (1 + 1e-9):
        raise SpecsimError(f"{at}: expected p10_s <= median_s <= p90_s, got "
                           f"{r.p10_s!r}, {r.median_s!r}, {r.p90_s!r}")
    for col in ("batch", "q", "ctx", "tokens"):
        if getattr(r, col) < 0:
            raise SpecsimError(f"{at}, column {col!r}: {getattr(r, col)} is negative")
    if r.samples < 1:
        raise SpecsimError(f"{at}, column 'samples': {r.samples} is not a positive count")
    if r.op in ("non_attention", "embedding", "lm_head", "allreduce"):
        if r.tokens < 1 or r.batch or r.q or r.ctx:
            raise SpecsimError(f"{at}: a {r.op} row needs tokens >= 1 and batch = q = ctx = 0")
    elif r.op in ("attention", "forward"):
        if r.batch < 1 or r.q < 1 or r.tokens != r.batch * r.q:
            raise SpecsimError(f"{at}: an {r.op} row needs batch >= 1, q >= 1 and tokens = batch * q "
                               f"(got batch={r.batch}, q={r.q}, tokens={r.tokens})")
    if r.key in seen:
        raise SpecsimError(f"{at}: duplicate point {r.key}")
    seen.add(r.key)


def _check_ops_present(rows: list[ProfileRow], where: str) -> None:
    if not any(r.op == "non_attention" for r in rows):
        raise SpecsimError(f"{where}: no non_attention rows; a profile needs at least the "
                           f"per-layer non-attention times")
