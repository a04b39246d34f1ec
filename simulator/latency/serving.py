"""What the serving engine's implementation pays on top of the GPU kernels (issue 16, MODEL.md 6b).

A latency backend prices the kernels of one forward pass. A real engine also pays: CPU time per
step (scheduling, input preparation, sampling bookkeeping, detokenisation) that grows with the
batch; kernel launches when it runs eager; CUDA-graph padding (a batch runs as the next captured
size, and eager above the largest); the way it scores a verify pass (batch expansion turns b
sequences of gamma+1 query tokens into b*(gamma+1) one-token sequences, each reading its whole KV
cache); the proposer's bookkeeping per draft step; and the memory-bound sampling/rejection passes
over b*(gamma+1)*vocab probabilities.

How the engine uses it, per step: `verify_shape` gives the (sequences, query tokens) the target's
verify pass is priced with; `padded_tokens` gives the token count the backend's linear layers see
when a graph pads the batch; `forward_launch_s` is added to every forward (target and each of the
draft's gamma forwards); `cpu_step_s` (through `exposed_cpu_s`, which hides it behind the GPU when
the engine overlaps scheduling) and `rejection_sampling_s`, `proposer_s` are added per step. Under
any preset other than "ideal" these replace the backend's own forward/step overhead constants
(RooflineParams.forward_overhead_s, step_overhead_s); under "ideal" (`replaces_backend_overheads`
False) this module adds exactly nothing and today's behaviour is kept.

Every constant carries its source in `EngineCosts.sources` (engine file and version, or the
measurement it was read from); those not found are zero and say so. Pure functions of scalars:
cheap enough to call once per step.
"""
from __future__ import annotations

import math
from bisect import bisect_left
from dataclasses import dataclass, field, fields
from functools import lru_cache

from simulator.errors import SpecsimError

SCORING = ("multi_query", "batch_expansion")
CAPTURE_UNITS = ("tokens", "sequences")

# vLLM V1 default capture grid: [1, 2, 4] + range(8, 256, 8) + range(256, max + 1, 16) with
# max = min(max_num_seqs * query_len * 2, 512) = 512 at the >=70 GiB default max_num_seqs 1024.
_VLLM_V1_SIZES = (1, 2, 4) + tuple(range(8, 256, 8)) + tuple(range(256, 513, 16))
# vLLM v0.5/0.6 vllm/worker/model_runner.py: _BATCH_SIZES_TO_CAPTURE = [1, 2, 4] + [8*i, i=1..32].
_VLLM_V0_SIZES = (1, 2, 4) + tuple(8 * i for i in range(1, 33))
# SGLang server_args.py _generate_cuda_graph_batch_sizes, cuda_graph_max_bs 256 (H100/H200, tp<4).
_SGLANG_AR_SIZES = (1, 2, 4, 8, 12) + tuple(range(16, 257, 8))
_SGLANG_SD_SIZES = (tuple(range(1, 9)) + tuple(range(10, 33, 2)) + tuple(range(40, 65, 4))
                    + tuple(range(72, 257, 8)))


@dataclass(frozen=True)
class EngineCosts:
    """One engine implementation's costs. Seconds unless named otherwise; see `sources`."""

    name: str
    version: str = ""  # the engine release/commit these constants describe
    cpu_step_fixed_s: float = 0.0  # CPU per engine step, independent of the batch (s)
    cpu_per_seq_s: float = 0.0  # CPU per running sequence per step (s)
    cpu_per_token_s: float = 0.0  # CPU per scheduled token per step (s)
    cpu_per_sampled_s: float = 0.0  # CPU per sampled position (verify: b*(gamma+1)) (s)
    cpu_overlap_ar: bool = False  # CPU work overlaps the GPU for AR steps (async scheduling)
    cpu_overlap_sd: bool = False  # the same for speculative steps
    cuda_graphs: bool = False  # decode/verify forwards replay captured graphs
    capture_unit: str = "sequences"  # what a capture size counts: "tokens" or "sequences"
    capture_sizes: tuple[int, ...] = ()  # captured sizes for AR forwards, ascending
    capture_sizes_sd: tuple[int, ...] | None = None  # for speculative deployments (None: same)
    capture_query_multiples: bool = False  # also captured: n*q tokens for n in the size grid
    launch_s: float = 0.0  # CPU cost of one eager kernel launch (s)
    kernels_per_layer: int = 0  # kernels one decoder layer launches eager
    kernels_per_layer_tp: int = 0  # extra kernels per layer when tp > 1 (all-reduces)
    kernels_fixed: int = 0  # per forward outside the layers: embedding, final norm, LM head, sampler
    graph_replay_s: float = 0.0  # CPU cost of replaying one captured forward (s)
    # Mixed prefill/decode batches under piecewise graphs: launches per layer (the eager
    # attention kernels plus one graph replay per piece); 0: such batches run fully eager.
    piecewise_kernels_per_layer: int = 0
    verify_scoring: str = "multi_query"  # "multi_query" or "batch_expansion"
    proposer_step_s: float = 0.0  # proposer bookkeeping per draft step (s)
    proposer_per_seq_s: float = 0.0  # and per sequence per draft step (s)
    sampler_bytes_per_element: float = 0.0  # HBM bytes per (scored position, vocab entry)
    rejection_bytes_per_element: float = 0.0  # per (draft position, vocab entry)
    # Scheduler and memory behaviour (simulator/deploy/kv_sizing.py, simulator/engine/replica.py):
    kv_watermark: float = 0.0  # fraction of KV blocks admission keeps free
    whole_prompt_admission: bool = False  # admit only when the whole prompt's blocks fit (v0)
    max_running_sd: int = 0  # cap on running sequences when speculating (0: max_num_seqs only)
    graph_memory_profiled: bool = False  # CUDA-graph memory is taken out of the KV budget
    sampler_generation: str = "v1"  # the profiling run's sampler footprint (kv_sizing.SAMPLER_BYTES)
    sources: dict = field(default_factory=dict, compare=False)

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            if f.type in ("float", "int"):
                ok = (isinstance(v, (int, float)) and not isinstance(v, bool)
                      and math.isfinite(v) and v >= 0 and (f.type == "float" or v == int(v)))
                if not ok:
                    kind = "a whole number" if f.type == "int" else "a finite number"
                    raise SpecsimError(f"engine.{f.name}: expected {kind} >= 0, got {v!r}")
            elif f.type == "bool" and not isinstance(v, bool):
                raise SpecsimError(f"engine.{f.name}: expected true or false, got {v!r}")
        _check_sizes("capture_sizes", self.capture_sizes)
        if self.capture_sizes_sd is not None:
            _check_sizes("capture_sizes_sd", self.capture_sizes_sd)
        if self.verify_scoring not in SCORING:
            raise SpecsimError(f"engine.verify_scoring: expected one of {SCORING}, "
                               f"got {self.verify_scoring!r}")
        if self.sampler_generation not in ("v0", "v1"):
            raise SpecsimError(f"engine.sampler_generation: expected 'v0' or 'v1', "
                               f"got {self.sampler_generation!r}")
        if self.kv_watermark >= 1:
            raise SpecsimError(f"engine.kv_watermark: expected a fraction below 1, "
                               f"got {self.kv_watermark!r}")
        if self.capture_unit not in CAPTURE_UNITS:
            raise SpecsimError(f"engine.capture_unit: expected one of {CAPTURE_UNITS}, "
                               f"got {self.capture_unit!r}")


def _check_sizes(name: str, sizes) -> None:
    ok = isinstance(sizes, tuple) and all(
        isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sizes)
    if not ok or any(a >= b for a, b in zip(sizes, sizes[1:])):
        raise SpecsimError(f"engine.{name}: expected strictly increasing positive whole "
                           f"numbers, got {sizes!r}")


# ---- per-step pricing (pure, scalar) ----

@lru_cache(maxsize=256)
def _captured(costs: EngineCosts, q_per_seq: int, speculative: bool) -> tuple[int, ...]:
    base = costs.capture_sizes_sd if speculative and costs.capture_sizes_sd is not None \
        else costs.capture_sizes
    if not costs.cuda_graphs or not base:
        return ()
    if costs.capture_unit == "tokens" and costs.capture_query_multiples and q_per_seq > 1:
        # vLLM V1 adds uniform-decode sizes n*(gamma+1) below its token ceiling.
        extra = {n * q_per_seq for n in base if n * q_per_seq <= base[-1]}
        return tuple(sorted(set(base) | extra))
    return base


def graph_key(n_seqs: int, q_per_seq: int, costs: EngineCosts) -> int:
    """The batch size in the engine's capture unit (tokens in vLLM V1, sequences otherwise)."""
    return n_seqs * q_per_seq if costs.capture_unit == "tokens" else n_seqs


def graph_batch(n: int, costs: EngineCosts, q_per_seq: int = 1,
                speculative: bool = False) -> int | None:
    """The captured size a batch of `n` (in the capture unit) runs as: the smallest captured size
    >= n; None when the engine runs eager or n is above the largest captured size."""
    sizes = _captured(costs, q_per_seq, speculative)
    if not sizes or n <= 0 or n > sizes[-1]:
        return None
    return sizes[bisect_left(sizes, n)]


def padded_tokens(n_seqs: int, q_per_seq: int, costs: EngineCosts,
                  speculative: bool = False) -> int:
    """Tokens the forward's linear layers process: the padded captured size when a graph runs."""
    g = graph_batch(graph_key(n_seqs, q_per_seq, costs), costs, q_per_seq, speculative)
    if g is None:
        return n_seqs * q_per_seq
    return g if costs.capture_unit == "tokens" else g * q_per_seq


def forward_launch_s(n_seqs: int, n_layers: int, costs: EngineCosts, q_per_seq: int = 1,
                     tp: int = 1, speculative: bool = False) -> float:
    """CPU launch cost of one forward: a graph replay when the batch is captured, else one
    launch per kernel (kernels_per_layer [+ tp all-reduces] x layers + kernels_fixed)."""
    if n_seqs <= 0:
        return 0.0
    key = graph_key(n_seqs, q_per_seq, costs)
    if graph_batch(key, costs, q_per_seq, speculative) is not None:
        return costs.graph_replay_s
    per_layer = costs.kernels_per_layer + (costs.kernels_per_layer_tp if tp > 1 else 0)
    return costs.launch_s * (per_layer * n_layers + costs.kernels_fixed)


def cpu_step_s(costs: EngineCosts, n_seqs: int, n_tokens: int, n_sampled: int) -> float:
    """CPU time of one engine step: fixed + per sequence + per scheduled token + per sampled
    position (a verify step samples b*(gamma+1) positions)."""
    return (costs.cpu_step_fixed_s + costs.cpu_per_seq_s * n_seqs
            + costs.cpu_per_token_s * n_tokens + costs.cpu_per_sampled_s * n_sampled)


def exposed_cpu_s(costs: EngineCosts, cpu_s: float, gpu_s: float, speculative: bool) -> float:
    """The part of a step's CPU time the step's wall time pays: all of it when the engine runs
    CPU and GPU in turn, only what exceeds the GPU time when it overlaps them."""
    overlap = costs.cpu_overlap_sd if speculative else costs.cpu_overlap_ar
    return max(0.0, cpu_s - gpu_s) if overlap else cpu_s


def verify_shape(b: int, gamma: int, costs: EngineCosts) -> tuple[int, int]:
    """(sequences, query tokens each) of the target's verify pass. Batch expansion: b*(gamma+1)
    one-token sequences; the caller gives expanded row j of a sequence its own context ctx+j."""
    if costs.verify_scoring == "batch_expansion":
        return b * (gamma + 1), 1
    return b, gamma + 1


def rejection_sampling_s(b: int, gamma: int, vocab: int, bandwidth_bytes_per_s: float,
                         costs: EngineCosts) -> float:
    """Memory-bound sampling passes of a verify step: the target sampler over b*(gamma+1) rows
    of the vocabulary and the rejection sampler over the b*gamma draft rows."""
    if bandwidth_bytes_per_s <= 0:
        raise ValueError("bandwidth must be positive")
    byts = vocab * b * ((gamma + 1) * costs.sampler_bytes_per_element
                        + gamma * costs.rejection_bytes_per_element)
    return byts / bandwidth_bytes_per_s


def proposer_s(costs: EngineCosts, n_seqs: int) -> float:
    """The proposer's bookkeeping for one draft step over n_seqs sequences."""
    return costs.proposer_step_s + costs.proposer_per_seq_s * n_seqs


def replaces_backend_overheads(costs: EngineCosts) -> bool:
    """False only for a preset that adds nothing (the "ideal" one): no constant, no graph
    padding, multi-query scoring. Then the backend's own overhead constants stay in force."""
    numeric = any(getattr(costs, f.name) for f in fields(costs) if f.type in ("float", "int"))
    return numeric or costs.cuda_graphs or costs.verify_scoring != "multi_query"
