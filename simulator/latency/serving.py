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

import difflib
import math
from bisect import bisect_left
from dataclasses import dataclass, field, fields, replace
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


# ---- presets: every nonzero constant names where it comes from ----

_LLAMA_KERNELS = (
    "counted in vllm/model_executor/models/llama.py (LlamaDecoderLayer/LlamaAttention/LlamaMLP, "
    "v0.6 line): input RMSNorm, qkv GEMM, rotary, reshape_and_cache + attention (2), o_proj GEMM, "
    "fused add+RMSNorm, gate_up GEMM, SiluAndMul, down GEMM = 10 per layer")
_LAUNCH = (
    "derived from a measurement: vLLM PR #1440 (2023-10, Llama-2-7B, batch 1, 100 output tokens) "
    "1.2 s eager vs 1.05 s with CUDA graphs = 1.5 ms/step over 32x10+8 = 328 kernels = 4.6 us; "
    "consistent with 4-6 us per launch measured in susun-blog.com 'pegainfer (3): From Launch "
    "Overhead to CUDA Graph'")
_REPLAY = ("one cudaGraphLaunch submits the whole captured forward (docs.nvidia.com/dl-cuda-graph, "
           "'CUDA Graph' basics), priced as one launch")
_FIXED_KERNELS = ("approximate: embedding, final norm, LM head and ~5 sampler kernels per forward "
                  "(vllm/model_executor/models/llama.py compute_logits/sample); not measured")
_TP_KERNELS = "RowParallelLinear o_proj and down_proj each end in an all-reduce when tp > 1 (llama.py)"

_V0_COMMON = dict(
    cpu_step_fixed_s=4e-3, launch_s=4.5e-6, kernels_per_layer=10, kernels_per_layer_tp=2,
    kernels_fixed=8, verify_scoring="batch_expansion", sampler_bytes_per_element=16.0,
    rejection_bytes_per_element=52.0, kv_watermark=0.01, whole_prompt_admission=True,
    sampler_generation="v0", proposer_step_s=2.8e-3)
_V0_SOURCES = {
    "cpu_step_fixed_s": "measurement: vLLM RFC #6854 (2024-07, v0.5.x): 'each highlighted redbox is "
                        "about 4ms of GPU bubble... incurred on every decode' (scheduler, input "
                        "prep, output processing); batch and model not given; not split by batch",
    "launch_s": _LAUNCH, "kernels_per_layer": _LLAMA_KERNELS, "kernels_per_layer_tp": _TP_KERNELS,
    "kernels_fixed": _FIXED_KERNELS,
    "verify_scoring": "vllm/spec_decode/batch_expansion.py BatchExpansionTop1Scorer (v0.5-0.6): "
                      "k+1 one-query sequences per sequence; only scorer before PR #8839 (v0.6.3), "
                      "and after it whenever the target is not eager (spec_decode_worker.py "
                      "create_worker: 'Disabling MQA scorer as the target model is not running "
                      "in eager mode')",
    "sampler_bytes_per_element": "vllm/model_executor/layers/sampler.py (v0.6): softmax and "
                                 "log_softmax in float32 over every scored row (read+write 4 B each)",
    "rejection_bytes_per_element": "vllm/model_executor/layers/rejection_sampler.py (v0.6), "
                                   "_get_recovered_probs + exponential-race multinomial over "
                                   "[b, k, vocab] float32: diff 12, clamp 8, sum 4, divide 8, "
                                   "exponential 4, div_ 12, argmax 4 = 52 B (pass count from code)",
    "proposer_step_s": "FITTED (the one fitted constant): the vLLM blog of 2024-10-17 "
                       "(Llama-3-70B on 4xH100, Qwama-0.5B draft, ShareGPT) measured 1.5x at QPS 1; "
                       "scenarios/vllm-blog-70b.yaml reproduces it with 2.8 ms per draft step "
                       "(alpha from the SDSL law for the 0.5B/70B pair, gamma 4). v0's draft worker "
                       "runs each draft step through its own model-runner call (prepare inputs, "
                       "sampler); no code-derived figure was found",
    "kv_watermark": "vllm/core/block_manager.py (v0.6) BlockSpaceManager(watermark=0.01): "
                    "can_allocate keeps 1% of GPU blocks free when admitting",
    "whole_prompt_admission": "vllm/core/block_manager.py (v0.6) can_allocate: the whole "
                              "prompt's blocks (plus lookahead) must fit to admit",
    "sampler_generation": "vllm/model_executor/layers/sampler.py (v0.6) profile_run sampler "
                          "with top_p 0.99 / top_k vocab-1 (simulator/deploy/kv_sizing.py)",
    "cpu_overlap_sd": "false: async output processing is off with speculative decoding in v0.6 "
                      "(vllm/config.py log 'Async output processing is not supported with "
                      "speculative decoding currently'); multi-step scheduling does not apply",
}

PRESETS: dict[str, EngineCosts] = {
    "ideal": EngineCosts(name="ideal", version="none", sources={
        "name": "adds nothing: the backend's own overhead constants apply (today's behaviour)"}),
    "vllm": EngineCosts(
        name="vllm",
        version="vLLM V1, main at commit 000fc94 (vllm/config/vllm.py); async default since v0.14.0",
        cpu_step_fixed_s=4.3e-4, cpu_per_seq_s=1.13e-6, cpu_overlap_ar=True, cpu_overlap_sd=True,
        cuda_graphs=True, capture_unit="tokens", capture_sizes=_VLLM_V1_SIZES,
        capture_query_multiples=True, launch_s=4.5e-6, kernels_per_layer=10,
        kernels_per_layer_tp=2, kernels_fixed=8, graph_replay_s=4.5e-6,
        verify_scoring="multi_query", sampler_bytes_per_element=16.0,
        rejection_bytes_per_element=12.0, graph_memory_profiled=True,
        sources={
            "graph_memory_profiled": "VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS default since "
                                     "v0.21.0 (vLLM 0.27.1 start-up log quoted in gpustack/runner "
                                     "PR #251): captured graphs are charged before KV sizing",
            "cpu_step_fixed_s": "measurement: vLLM PR #42131 (2026-05, B200, decode-only steps): "
                                "schedule() 0.2 ms + _update_states >=0.18 ms + _prepare_inputs "
                                ">=0.05 ms per step (batch not stated)",
            "cpu_per_seq_s": "measurement: vLLM PR #46112 micro-benchmark of "
                             "Scheduler.update_from_output: 0.142 ms at 128 seqs, 0.287 ms at 256 "
                             "-> 1.13 us/seq (one per-request loop only: a lower bound)",
            "cpu_overlap_ar": "async scheduling on by default since v0.14.0 (PR #27614, release "
                              "notes); vllm/config/vllm.py (000fc94) resolves async_scheduling=None "
                              "to True",
            "cpu_overlap_sd": "vllm/config/vllm.py (000fc94): async scheduling stays on for "
                              "EAGLE/MTP/draft_model/ngram-GPU/dspark speculative methods",
            "cuda_graphs": "vllm/config/vllm.py _set_cudagraph_sizes: graphs unless enforce_eager",
            "capture_unit": "vllm/config/vllm.py _set_cudagraph_sizes: sizes are 'decode sizes to "
                            "cover, in tokens'",
            "capture_sizes": "vllm/config/vllm.py _set_cudagraph_sizes (000fc94): [1,2,4] + "
                             "range(8,256,8) + range(256,max+1,16), max = min(max_num_seqs*q*2, "
                             "512, max_num_batched_tokens); max_num_seqs 1024 on >=70 GiB non-A100 "
                             "GPUs (vllm/engine/arg_utils.py get_batch_defaults) -> 512",
            "capture_query_multiples": "vllm/config/vllm.py _set_cudagraph_sizes: with "
                                       "decode_query_len > 1 it adds n*decode_query_len for n in "
                                       "the request-count grid",
            "launch_s": _LAUNCH, "kernels_per_layer": _LLAMA_KERNELS,
            "kernels_per_layer_tp": _TP_KERNELS, "kernels_fixed": _FIXED_KERNELS,
            "graph_replay_s": _REPLAY,
            "verify_scoring": "V1 native multi-query verification: vllm/v1/sample/"
                              "rejection_sampler.py takes logits [num_tokens + batch_size, vocab]",
            "sampler_bytes_per_element": "vllm/v1/sample/rejection_sampler.py forward: target "
                                         "logits gathered and cast to float32 (8 B) and softmax "
                                         "in float32 (8 B)",
            "rejection_bytes_per_element": "vllm/v1/sample/rejection_sampler.py: clone of raw "
                                           "target logits (8 B) + argmax (4 B) for greedy; random "
                                           "sampling adds temperature 8 B + recovered tokens 8 B",
        }),
    "vllm-0.6-batch-expansion-eager": EngineCosts(
        name="vllm-0.6-batch-expansion-eager",
        version="vLLM v0.6.0-v0.6.2 with --enforce-eager (v0 spec_decode, batch expansion)",
        **_V0_COMMON, sources={**_V0_SOURCES, "cuda_graphs": "false: --enforce-eager"}),
    "vllm-0.6-batch-expansion-cudagraph": EngineCosts(
        name="vllm-0.6-batch-expansion-cudagraph",
        version="vLLM v0.6.x default (CUDA graphs; v0 spec_decode, batch expansion)",
        cuda_graphs=True, capture_unit="sequences", capture_sizes=_VLLM_V0_SIZES,
        graph_replay_s=4.5e-6, **_V0_COMMON, sources={
            **_V0_SOURCES,
            "cuda_graphs": "vLLM v0 default: graphs for decode batches (enforce_eager=False)",
            "capture_unit": "vllm/worker/model_runner.py (v0.6): one graph per decode batch size",
            "capture_sizes": "vllm/worker/model_runner.py (v0.5-0.6): _BATCH_SIZES_TO_CAPTURE = "
                             "[1,2,4] + [8*i for i in 1..32], capped at max_num_seqs (default 256)",
            "graph_replay_s": _REPLAY}),
    "sglang": EngineCosts(
        name="sglang", version="SGLang v0.5.x (python/sglang/srt/server_args.py)",
        cpu_step_fixed_s=9.0e-4, cpu_per_seq_s=2.9e-5, cpu_overlap_ar=True, cpu_overlap_sd=False,
        cuda_graphs=True, capture_unit="sequences", capture_sizes=_SGLANG_AR_SIZES,
        capture_sizes_sd=_SGLANG_SD_SIZES, launch_s=4.5e-6, kernels_per_layer=10,
        kernels_per_layer_tp=2, kernels_fixed=8, graph_replay_s=4.5e-6,
        verify_scoring="multi_query", max_running_sd=48,
        sources={
            "max_running_sd": "python/sglang/srt/server_args.py (v0.5.x): max_running_requests "
                              "defaults to 48 when a speculative algorithm is set",
            "cpu_step_fixed_s": "measurement on sglang-omni (SGLang-based), issue "
                                "sgl-project/sglang-omni#760 (2026-06, H100, TP2, CUDA graphs): "
                                "host/scheduler 1.37 ms/step at 16 seqs, 1.66 at 24, 1.84 at 32; "
                                "linear fit intercept",
            "cpu_per_seq_s": "same measurement, linear fit slope 29 us/seq",
            "cpu_overlap_ar": "overlap scheduler on by default (SGLang v0.4 'zero-overhead batch "
                              "scheduler', lmsys blog 2024-12-04)",
            "cpu_overlap_sd": "false: server_args.py (v0.5.6) 'Overlap scheduler is disabled "
                              "because of using eagle3 or standalone speculative decoding'",
            "cuda_graphs": "SGLang default (disable_cuda_graph False)",
            "capture_unit": "cuda_graph_runner.py get_batch_sizes_to_capture: sizes are requests "
                            "(verify uses num_tokens_per_bs = gamma+1)",
            "capture_sizes": "server_args.py _generate_cuda_graph_batch_sizes, non-speculative: "
                             "[1,2,4,8,12] + range(16,257,8); cuda_graph_max_bs 256 on 80-160 GB "
                             "GPUs at tp<4 (512 at tp>=4: override)",
            "capture_sizes_sd": "server_args.py _generate_cuda_graph_batch_sizes, speculative: "
                                "range(1,9) + range(10,33,2) + range(40,65,4) + range(72,257,8)",
            "launch_s": _LAUNCH + " (vLLM figure; SGLang eager not measured)",
            "kernels_per_layer": _LLAMA_KERNELS + " (vLLM count, assumed for SGLang)",
            "kernels_per_layer_tp": _TP_KERNELS, "kernels_fixed": _FIXED_KERNELS,
            "graph_replay_s": _REPLAY,
            "verify_scoring": "SGLang target_verify forward: gamma+1 query tokens per request "
                              "in one pass (speculative/eagle_worker.py, cuda_graph_runner.py)",
        }),
}

_FIELDS = {f.name for f in fields(EngineCosts)}


def preset(name: str) -> EngineCosts:
    """The named preset; an unknown name is a clear error with the closest known names."""
    try:
        return PRESETS[name]
    except KeyError:
        close = difflib.get_close_matches(str(name), PRESETS, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise SpecsimError(f"engine.preset: unknown engine preset {name!r} (known: "
                           f"{', '.join(sorted(PRESETS))}){hint}") from None


def with_overrides(costs: EngineCosts, overrides: dict) -> EngineCosts:
    """`costs` with some fields replaced (validated); overridden fields are sourced as such."""
    unknown = sorted(set(overrides) - (_FIELDS - {"name", "sources"}))
    if unknown:
        raise SpecsimError(f"engine: unknown field(s) {', '.join(unknown)} (known: "
                           f"{', '.join(sorted(_FIELDS - {'name', 'sources'}))})")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
    sources = {**costs.sources, **{k: "user override" for k in values}}
    return replace(costs, **values, sources=sources)


def load_calibrated(path, field: str) -> EngineCosts:
    """Engine costs saved by `specsim calibrate-engine`: {"preset": name, "params": {...}, ...}
    (the fitted fields over the named preset)."""
    from pathlib import Path
    from simulator.user_files import load_user_json
    p = Path(path)
    if not p.is_file():
        raise SpecsimError(f"{field}: no engine calibration at {p}")
    try:
        data = load_user_json(p, "engine calibration")
    except SpecsimError as e:
        raise SpecsimError(f"{field}: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("preset"), str) \
            or not isinstance(data.get("params", {}), dict):
        raise SpecsimError(f"{field}: {p} must hold {{'preset': name, 'params': {{...}}}}")
    return with_overrides(preset(data["preset"]), data.get("params", {}))
