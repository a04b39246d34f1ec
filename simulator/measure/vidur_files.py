"""Vidur's profiling directory (see simulator/measure/vidur.py for its layout): its GPU and
operator names, reading its CSV files, finding its models and matching them to the catalogue."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from simulator.errors import SpecsimError
from simulator.hardware.gpus import GPUS
from simulator.hardware.models import MODELS, ModelArch
from simulator.latency.profiles import ProfileRow

# Vidur GPU folder -> specsim GPU catalogue name (Vidur's a40 is NVIDIA's A40 PCIe card).
GPU_NAMES = {"h100": "h100-sxm", "a100": "a100-80gb-sxm", "a40": "a40"}
GPU_LABELS = {"h100": "NVIDIA H100 (Vidur profile 'h100')",
              "a100": "NVIDIA A100 (Vidur profile 'a100')",
              "a40": "NVIDIA A40 (Vidur profile 'a40')"}
# Vidur GPUs whose specsim name has no catalogue entry (a scenario must define them inline).
NOT_IN_CATALOGUE = {g for g, name in GPU_NAMES.items() if name not in GPUS}

# The per-layer non-attention operators of Vidur's mlp.csv (each counted once per layer), and the
# embedding lookup (once per forward). Parallel-block models (phi-2) have no
# post_attention_layernorm: the optional ops are used where their columns exist.
LAYER_OPS = ("input_layernorm", "attn_pre_proj", "attn_rope", "attn_post_proj",
             "post_attention_layernorm", "mlp_up_proj", "mlp_act", "mlp_down_proj", "add")
REQUIRED_LAYER_OPS = ("input_layernorm", "attn_pre_proj", "attn_post_proj", "mlp_up_proj",
                      "mlp_act", "mlp_down_proj")
EMB_OP = "emb"
STATS = ("min", "max", "median")
SHAPE_COLUMNS = ("n_head", "n_kv_head", "n_embd", "n_expanded_embd", "vocab_size", "use_gated_mlp")
MLP_KEYS = ("num_tokens", "num_tensor_parallel_workers")
ATTN_SHAPE = ("n_embd", "n_q_head", "n_kv_head", "num_tensor_parallel_workers")
ATTN_KEYS = ("batch_size", "prefill_chunk_size", "kv_cache_size", "is_prefill")
ATTN_OPS = ("attn_input_reshape", "attn_decode", "attn_prefill", "attn_output_reshape")
AR_COLUMNS = ("num_workers", "size", "devices_per_node", "collective",
              "time_stats.all_reduce.min", "time_stats.all_reduce.max",
              "time_stats.all_reduce.median")
BYTES_16BIT = 2
MS = 1e-3
LICENCE = ("Vidur profiling data, Copyright (c) Microsoft Corporation, MIT licence "
           "(https://github.com/microsoft/vidur); see the LICENSE file beside the data.")


@dataclass(frozen=True)
class VidurShape:
    """The model shape columns of a Vidur mlp.csv."""

    n_head: int
    n_kv_head: int
    n_embd: int
    n_expanded_embd: int
    vocab_size: int
    use_gated_mlp: bool

    def layer_key(self) -> tuple:
        return (self.n_head, self.n_kv_head, self.n_embd, self.n_expanded_embd, self.use_gated_mlp)


def _arch_layer_key(m: ModelArch) -> tuple:
    return (m.n_heads, m.n_kv_heads, m.hidden, m.ffn, m.gated_mlp)


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", name.lower()).strip("-")


def read_csv(path: Path, required: list[str], nonnull: list[str] | None = None) -> pd.DataFrame:
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise SpecsimError(f"{path}: not a readable Vidur CSV ({e})") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise SpecsimError(f"{path}: missing column(s) {', '.join(missing)} expected in a Vidur "
                           f"{path.name}")
    nonnull = required if nonnull is None else nonnull
    bad = df[nonnull].isna().any()
    if bad.any():
        col = bad[bad].index[0]
        raise SpecsimError(f"{path}: column {col!r} has empty values; expected a value in every row")
    return df


def stat_cols(op: str) -> list[str]:
    return [f"time_stats.{op}.{s}" for s in STATS]


def merge_points(df: pd.DataFrame, keys: list[str], ops: tuple[str, ...]) -> pd.DataFrame:
    """One row per key: Vidur sometimes measured a point twice. Median of the medians, min of the
    mins, max of the maxes, and how many Vidur rows were merged."""
    agg: dict = {}
    for op in ops:
        mn, mx, md = stat_cols(op)
        agg[mn], agg[mx], agg[md] = "min", "max", "median"
    out = df.groupby(keys, sort=True).agg(agg)
    out["n_rows"] = df.groupby(keys, sort=True).size()
    return out.reset_index()


def check_times(df: pd.DataFrame, cols: list[str], path: Path) -> None:
    vals = df[cols].to_numpy(dtype=float)
    if not np.isfinite(vals).all() or (vals < 0).any():
        bad_col = cols[int(np.argwhere(~np.isfinite(vals) | (vals < 0))[0][1])]
        raise SpecsimError(f"{path}: column {bad_col!r} has a negative or non-finite time; "
                           f"expected milliseconds >= 0")


def profile_row(op: str, batch: int, q: int, ctx: int, tokens: int, med: float, lo: float, hi: float,
         n: int) -> ProfileRow:
    # Vidur reports times to 1 us (0.001 ms); rounding seconds to 0.1 ns keeps every digit.
    med, lo, hi = (round(float(x) * MS, 10) for x in (med, lo, hi))
    return ProfileRow(op, int(batch), int(q), int(ctx), int(tokens), med, min(lo, med), max(hi, med),
                      int(n))


@dataclass
class VidurModel:
    """One mlp.csv (and its attention.csv, if any) of one Vidur GPU."""

    vidur_gpu: str
    vidur_name: str  # e.g. "meta-llama/Llama-2-7b-hf"
    mlp_path: Path
    attention_path: Path | None
    shape: VidurShape
    ops: tuple[str, ...]  # the per-layer ops this file has, in LAYER_OPS order
    mlp: pd.DataFrame  # merged: one row per (num_tokens, tp)


def profiling_root(root: Path | str) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise SpecsimError(f"{root}: not a directory (expected Vidur's profiling/ directory)")
    if (root / "profiling").is_dir() and not (root / "compute").is_dir():
        root = root / "profiling"
    return root


def find_vidur_models(root: Path) -> list[VidurModel]:
    """Every compute/<gpu>/<org>/<model>/mlp.csv under `root` (the Vidur `profiling` directory or
    its parent)."""
    root = profiling_root(root)
    mlps = sorted(root.glob("compute/*/*/*/mlp.csv"))
    if not mlps:
        raise SpecsimError(f"{root}: no Vidur profiles found; expected files "
                           f"compute/<gpu>/<org>/<model>/mlp.csv under it")
    out = []
    for path in mlps:
        gpu = path.parts[-4]
        if gpu not in GPU_NAMES:
            raise SpecsimError(f"{path}: unknown Vidur GPU folder {gpu!r}; expected one of "
                               f"{', '.join(GPU_NAMES)}")
        header = pd.read_csv(path, nrows=0).columns if path.stat().st_size else []
        found = {c.split(".")[1] for c in header if c.startswith("time_stats.")}
        unknown = sorted(found - {EMB_OP, *LAYER_OPS})
        if unknown:
            raise SpecsimError(f"{path}: unknown Vidur operator column(s) time_stats.{unknown[0]}.*; "
                               f"expected only {', '.join((EMB_OP, *LAYER_OPS))}")
        ops = tuple(op for op in LAYER_OPS if op in found or op in REQUIRED_LAYER_OPS)
        required = [c for op in (EMB_OP, *ops) for c in stat_cols(op)]
        required += [*SHAPE_COLUMNS, *MLP_KEYS]
        df = read_csv(path, required)
        check_times(df, [c for c in required if c.startswith("time_stats.")], path)
        shapes = df[list(SHAPE_COLUMNS)].drop_duplicates()
        if len(shapes) != 1:
            raise SpecsimError(f"{path}: {len(shapes)} different model shapes in columns "
                               f"{', '.join(SHAPE_COLUMNS)}; expected one model per file")
        s = shapes.iloc[0]
        shape = VidurShape(int(s.n_head), int(s.n_kv_head), int(s.n_embd), int(s.n_expanded_embd),
                           int(s.vocab_size), bool(s.use_gated_mlp))
        if shape.n_embd % shape.n_head:
            raise SpecsimError(f"{path}: n_embd={shape.n_embd} is not a multiple of n_head="
                               f"{shape.n_head}")
        attn = path.with_name("attention.csv")
        out.append(VidurModel(gpu, f"{path.parts[-3]}/{path.parts[-2]}", path,
                              attn if attn.is_file() else None, shape, ops,
                              merge_points(df, list(MLP_KEYS), (EMB_OP, *ops))))
    return out


def _same_layers(m: ModelArch, shape: VidurShape) -> bool:
    # Vidur's models all apply RoPE (an attn_rope op); OPT's learned positions and different block
    # layout are not the same architecture even at equal GEMM shapes.
    return (m.family == "llama" and _arch_layer_key(m) == shape.layer_key()
            and m.head_dim == shape.n_embd // shape.n_head)


def specsim_model_names(models: list[VidurModel]) -> dict[tuple[str, str], list[tuple[str, str]]]:
    """(vidur gpu, vidur model) -> [(specsim model name, how it was matched), ...], own name first.

    1. "hf-id": the catalogue model whose hf_id is the Vidur model's name (Vidur names models by
       their HF repository) is that very model; its per-layer shape must equal Vidur's (the
       vocabulary may differ: Vidur pads Llama-2's 32000 to 32768, and no row Vidur measures
       depends on it).
    2. Every catalogue model still without a profile on that GPU whose per-layer shape equals a
       Vidur model's also gets that model's profile: "exact" if the vocabulary is equal too
       (preferred), else "layer-shape" (every row Vidur measures is per layer or the embedding
       gather). Llama-2-70B's H100 data so times llama-3.1-70b scenarios as well.
    3. A Vidur model given no name by 1 or 2 goes under a slug of its name ("none").
    """
    by_hf = {m.hf_id: m for m in MODELS.values() if m.hf_id}
    names: dict = {(vm.vidur_gpu, vm.vidur_name): [] for vm in models}
    claimed: set = set()
    for vm in models:
        m = by_hf.get(vm.vidur_name)
        if m is None:
            continue
        if not _same_layers(m, vm.shape):
            raise SpecsimError(f"{vm.mlp_path}: Vidur model {vm.vidur_name!r} is catalogue model "
                               f"{m.name!r} by its HF id, but Vidur's shape {vm.shape.layer_key()} "
                               f"differs from the catalogue's {_arch_layer_key(m)}")
        names[(vm.vidur_gpu, vm.vidur_name)].append((m.name, "hf-id"))
        claimed.add((vm.vidur_gpu, m.name))
    for gpu in sorted({vm.vidur_gpu for vm in models}):
        on_gpu = [vm for vm in models if vm.vidur_gpu == gpu]
        for m in MODELS.values():
            if (gpu, m.name) in claimed:
                continue
            same = [vm for vm in on_gpu if _same_layers(m, vm.shape)]
            exact = [vm for vm in same if vm.shape.vocab_size == m.vocab]
            if same:
                vm = (exact or same)[0]
                names[(gpu, vm.vidur_name)].append((m.name, "exact" if exact else "layer-shape"))
                claimed.add((gpu, m.name))
    for vm in models:
        key = (vm.vidur_gpu, vm.vidur_name)
        if not names[key]:
            s = slug(vm.vidur_name.split("/")[-1])
            if s in MODELS:
                raise SpecsimError(f"{vm.mlp_path}: Vidur model {vm.vidur_name!r} slugs to the "
                                   f"catalogue name {s!r} but its shape differs from it")
            names[key] = [(s, "none")]
    return names
