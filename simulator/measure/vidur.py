"""Import the Vidur project's GPU profiles into specsim's profile format.

Vidur (microsoft/vidur, MIT licence) measured per-operator times with the torch profiler on real
A100, A40 and H100 machines. Its layout, under a `profiling/` directory:

  compute/<gpu>/<org>/<model>/mlp.csv        per-operator times (ms) of one layer's non-attention
                                             work over num_tokens x num_tensor_parallel_workers,
                                             plus the model shape columns
  compute/<gpu>/<org>/<model>/attention.csv  (optional) decode (batch x kv) and prefill
                                             (chunk x kv) attention times (ms)
  network/<gpu>_dgx/all_reduce.csv           all-reduce times (ms) over message bytes x workers

Each (gpu, model, tp) becomes a profile pair `<out>/<specsim gpu>/<model>/tp<k>.{csv,json}` under
the model's catalogue name (and under other catalogue models with its layer shapes:
vidur_files.specsim_model_names):
  non_attention(T) = sum of the per-layer operator medians (each kept as an `op:<name>` row),
  embedding(T) from `emb`, attention rows where an attention.csv matches the attention shape and
  tp, allreduce rows from the DGX all_reduce.csv at message sizes that are a whole number of
  tokens x hidden x 2 bytes.
Vidur records min/max/mean/median/std per point, not percentiles: p10_s/p90_s hold Vidur's
min/max (they bound the true p10/p90), and the sidecar says so.
"""
from __future__ import annotations

import shlex
from datetime import date
from functools import lru_cache
from pathlib import Path

import pandas as pd

from simulator import __version__
from simulator.errors import SpecsimError
from simulator.hardware.models import MODELS
from simulator.latency.profiles import Profile, ProfileMeta, ProfileRow, write_profile
from simulator.measure.vidur_files import (AR_COLUMNS, ATTN_KEYS, ATTN_OPS, ATTN_SHAPE, BYTES_16BIT, EMB_OP,
                                           GPU_LABELS, GPU_NAMES, LICENCE, NOT_IN_CATALOGUE, SHAPE_COLUMNS,
                                           VidurModel, VidurShape, check_times, find_vidur_models,
                                           merge_points, profile_row, profiling_root, read_csv,
                                           specsim_model_names, stat_cols)

def _load_attention(path: Path) -> pd.DataFrame:
    # One file serves every tp and every model sharing its attention shape: parse it once.
    return _load_attention_cached(path, path.stat().st_mtime_ns)


@lru_cache(maxsize=4)
def _load_attention_cached(path: Path, _mtime_ns: int) -> pd.DataFrame:
    required = [*ATTN_SHAPE, *ATTN_KEYS] + [c for op in ATTN_OPS for c in stat_cols(op)]
    # Decode rows leave the prefill times empty and the reverse: only the keys must be filled.
    return read_csv(path, required, nonnull=[*ATTN_SHAPE, *ATTN_KEYS])


def _attention_rows(path: Path, shape: VidurShape, tp: int) -> tuple[list[ProfileRow], dict | None]:
    """Attention rows (and breakdown rows) for this shape and tp, or none if the file's attention
    shape or tp differ."""
    df = _load_attention(path)
    sel = df[(df.n_embd == shape.n_embd) & (df.n_q_head == shape.n_head)
             & (df.n_kv_head == shape.n_kv_head) & (df.num_tensor_parallel_workers == tp)]
    if sel.empty:
        return [], None
    rows: list[ProfileRow] = []
    grid: dict = {}
    for prefill, kernel in ((False, "attn_decode"), (True, "attn_prefill")):
        part = sel[sel.is_prefill == prefill]
        if part.empty:
            continue
        ops = ("attn_input_reshape", kernel, "attn_output_reshape")
        cols = [c for op in ops for c in stat_cols(op)]
        if part[cols].isna().any().any():
            raise SpecsimError(f"{path}: empty {kernel} times in rows with is_prefill={prefill}")
        check_times(part, cols, path)
        merged = merge_points(part, ["batch_size", "prefill_chunk_size", "kv_cache_size"], ops)
        for r in merged.to_dict("records"):
            if prefill:
                batch, q = 1, int(r["prefill_chunk_size"])
            else:
                batch, q = int(r["batch_size"]), 1
            ctx = int(r["kv_cache_size"])
            parts = {op: [r[c] for c in stat_cols(op)] for op in ops}
            lo = sum(p[0] for p in parts.values())
            hi = sum(p[1] for p in parts.values())
            med = sum(p[2] for p in parts.values())
            rows.append(profile_row("attention", batch, q, ctx, batch * q, med, lo, hi, r["n_rows"]))
            for op, (mn, mx, md) in parts.items():
                if md > 0:  # the loader needs positive times; a 0.000 ms reshape adds nothing
                    rows.append(profile_row(f"op:{op}", batch, q, ctx, batch * q, md, mn, mx, r["n_rows"]))
        if prefill:
            grid["prefill"] = {"batch": 1, "q": _span(merged.prefill_chunk_size),
                               "ctx": _span(merged.kv_cache_size), "points": len(merged)}
        else:
            grid["decode"] = {"batch": _span(merged.batch_size), "q": 1,
                              "ctx": _span(merged.kv_cache_size), "points": len(merged)}
    return rows, grid


def _span(values) -> dict:
    v = sorted({int(x) for x in values})
    return {"min": v[0], "max": v[-1], "count": len(v)}


def _allreduce_rows(root: Path, vidur_gpu: str, hidden: int, tp: int) -> tuple[list[ProfileRow], str | None]:
    """Rows from network/<gpu>_dgx/all_reduce.csv with tp workers all on one node, at message
    sizes that are a whole number of tokens x hidden x 2 bytes (no interpolation)."""
    path = root / "network" / f"{vidur_gpu}_dgx" / "all_reduce.csv"
    if tp == 1 or not path.is_file():
        return [], None
    df = read_csv(path, list(AR_COLUMNS))
    check_times(df, [c for c in AR_COLUMNS if c.startswith("time_stats.")], path)
    sel = df[(df.collective == "all_reduce") & (df.num_workers == tp) & (df.devices_per_node == tp)]
    per_token = hidden * BYTES_16BIT
    sel = sel[sel["size"] % per_token == 0]
    if sel.empty:
        return [], None
    merged = merge_points(sel.assign(tokens=sel["size"] // per_token), ["tokens"], ("all_reduce",))
    rows = [profile_row("allreduce", 0, 0, 0, t, md, mn, mx, n)
            for t, mn, mx, md, n in merged[["tokens", *stat_cols("all_reduce"), "n_rows"]]
            .itertuples(index=False)]
    return rows, str(path)


def _per_token_rows(vm: VidurModel, part: pd.DataFrame, breakdown: bool) -> list[ProfileRow]:
    """non_attention (the sum of the layer's op medians, min and max), its op:<name> rows, and
    embedding, at every token count of one tp's mlp.csv rows."""
    rows: list[ProfileRow] = []
    for r in part.to_dict("records"):
        t, n = int(r["num_tokens"]), int(r["n_rows"])
        stats = {op: [r[c] for c in stat_cols(op)] for op in (EMB_OP, *vm.ops)}
        mn = sum(stats[op][0] for op in vm.ops)
        mx = sum(stats[op][1] for op in vm.ops)
        md = sum(stats[op][2] for op in vm.ops)
        rows.append(profile_row("non_attention", 0, 0, 0, t, md, mn, mx, n))
        if breakdown:
            rows += [profile_row(f"op:{op}", 0, 0, 0, t, stats[op][2], stats[op][0], stats[op][1], n)
                     for op in vm.ops if stats[op][2] > 0]
        if stats[EMB_OP][2] > 0:
            rows.append(profile_row("embedding", 0, 0, 0, t, stats[EMB_OP][2], stats[EMB_OP][0],
                                    stats[EMB_OP][1], n))
    return rows


def import_vidur(root: Path | str, *, gpus: list[str] | None = None, breakdown: bool = True,
                 command: str | None = None) -> list[Profile]:
    """Convert every (gpu, model, tp) under a Vidur profiling directory into Profiles (not written).

    `gpus` restricts to some Vidur GPU folders (e.g. ["h100", "a100"]); `breakdown=False` leaves
    out the op:<name> rows (they make the files ~5x larger).
    """
    models = find_vidur_models(root)
    base = profiling_root(root)
    if gpus is not None:
        unknown = [g for g in gpus if g not in GPU_NAMES]
        if unknown:
            raise SpecsimError(f"--gpus: unknown Vidur GPU(s) {', '.join(unknown)}; expected some of "
                               f"{', '.join(GPU_NAMES)}")
        models = [m for m in models if m.vidur_gpu in gpus]
    names = specsim_model_names(models)
    command = command or f"specsim import-vidur {shlex.quote(str(root))}"
    today = date.today().isoformat()
    profiles = []
    for vm in models:
        vm_names = names[(vm.vidur_gpu, vm.vidur_name)]
        match = vm_names[0][1]
        gpu = GPU_NAMES[vm.vidur_gpu]
        for tp, part in vm.mlp.groupby("num_tensor_parallel_workers", sort=True):
            tp = int(tp)
            rows = _per_token_rows(vm, part, breakdown)
            attn_grid = None
            if vm.attention_path is not None:
                arows, attn_grid = _attention_rows(vm.attention_path, vm.shape, tp)
                if not breakdown:
                    arows = [a for a in arows if not a.op.startswith("op:")]
                rows += arows
            # A Vidur attention.csv measures one attention shape; catalogue models on the same GPU
            # with the same attention shape (heads, KV heads, hidden) and tp share it, so that
            # scenarios on them get measured attention (slug models only keep their own: it would
            # be a copy no scenario can use).
            attn_src = vm.attention_path
            if attn_grid is None and match != "none":
                for other in models:
                    if (other.vidur_gpu == vm.vidur_gpu and other.attention_path is not None
                            and other is not vm):
                        arows, attn_grid = _attention_rows(other.attention_path, vm.shape, tp)
                        if attn_grid is not None:
                            rows += [a for a in arows if breakdown or not a.op.startswith("op:")]
                            attn_src = other.attention_path
                            break
            ar_rows, ar_src = _allreduce_rows(base, vm.vidur_gpu, vm.shape.n_embd, tp)
            rows += ar_rows
            for model_name, how in vm_names:  # its own name first, then catalogue copies
                profiles.append(Profile(_meta(vm, model_name, how, gpu, tp, part, attn_grid,
                                              attn_src if attn_grid else None, ar_rows, ar_src,
                                              breakdown, command, today, vm_names), list(rows)))
    return profiles


def _meta(vm: VidurModel, model_name: str, match: str, gpu: str, tp: int, part: pd.DataFrame,
          attn_grid: dict | None, attn_src: Path | None, ar_rows: list, ar_src: str | None,
          breakdown: bool, command: str, today: str, vm_names: list) -> ProfileMeta:
    grid: dict = {"non_attention_tokens": _span(part.num_tokens),
                  "embedding_tokens": _span(part.num_tokens)}
    if attn_grid:
        grid["attention"] = attn_grid
    if ar_rows:
        grid["allreduce_tokens"] = _span(r.tokens for r in ar_rows)
    sources = [str(vm.mlp_path)] + ([str(attn_src)] if attn_src else []) + ([ar_src] if ar_src else [])
    notes = {
        "vidur_model": vm.vidur_name,
        "vidur_gpu": vm.vidur_gpu,
        "vidur_shape": {c: getattr(vm.shape, c) for c in SHAPE_COLUMNS},
        "catalogue_match": match,
        "source_files": sources,
        "licence": LICENCE,
        "non_attention": "sum of the medians of Vidur's per-layer ops " + ", ".join(vm.ops)
                         + (" (each kept as an op:<name> row)" if breakdown else
                            " (op:<name> rows left out with --no-breakdown)"),
        "embedding": "Vidur op 'emb'",
        "percentiles": "p10_s/p90_s hold Vidur's min/max over its repeats (Vidur records no "
                       "percentiles); samples = Vidur rows merged into the point (Vidur does not "
                       "record its repeat count)",
        "dtype": "not recorded by Vidur; the GEMM times imply 16-bit weights (fp16/bf16 have the "
                 "same width and tensor-core rate on these GPUs), recorded as bf16",
        "mode": "Vidur timed each operator's device kernels (Kineto) in eager PyTorch; CPU launch "
                "overhead is not in these times",
        "lm_head": "not measured by Vidur",
    }
    if len(vm_names) > 1:  # calibration counts one measurement once (measure/calibrate.py)
        notes["same_data_as"] = [n for n, _ in vm_names if n != model_name]
    vocab = MODELS[model_name].vocab if model_name in MODELS else None
    detail = [f"{vm.vidur_name} is catalogue model {model_name} (its hf_id)"] if match == "hf-id" else []
    if match in ("hf-id", "layer-shape") and vocab != vm.shape.vocab_size:
        detail.append(f"per-layer shape equals {model_name}'s; vocabulary differs (Vidur "
                      f"{vm.shape.vocab_size} vs {vocab}), which only the LM head depends on, and "
                      f"Vidur has no LM head rows")
    if detail:
        notes["catalogue_match_detail"] = "; ".join(detail)
    elif match == "none":
        notes["catalogue_match_detail"] = ("no catalogue model has this shape; a scenario needs an "
                                           "inline model with the shape in vidur_shape")
    if vm.vidur_gpu in NOT_IN_CATALOGUE:
        notes["device"] = (f"{gpu} is not in the GPU catalogue; a scenario must define the device "
                           f"inline (name {gpu!r}) to use this profile")
    if tp > 1 and not ar_rows:
        notes["allreduce"] = "no Vidur all_reduce.csv for this GPU and tp: no allreduce rows"
    backend = "flash_attention (Vidur)" if attn_grid else "unknown (Vidur)"
    return ProfileMeta(
        model=model_name, tp=tp, dtype="bf16",
        device={"name": GPU_LABELS[vm.vidur_gpu], "memory_bytes": None, "driver": None,
                "cuda": None, "torch": None},
        gpu=gpu, attention_backend=backend, mode="eager", date=today, grid=grid, command=command,
        specsim_version=__version__, step_overhead_s=None, forward_overhead_s=None,
        source="vidur-import", notes=notes)


def write_vidur(root: Path | str, out: Path | str = Path("profiles"), **kw) -> list[Path]:
    """Import and write every profile; return the CSV paths written."""
    return [write_profile(p, out) for p in import_vidur(root, **kw)]
