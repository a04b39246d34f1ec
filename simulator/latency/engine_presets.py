"""The serving-engine presets (simulator/latency/serving.py defines what each field means): a
registry of named EngineCosts, every nonzero constant with its source, and the lookups that turn
a scenario's `engine:` block into costs (unknown names and fields are one-line errors)."""
from __future__ import annotations

import difflib
from dataclasses import fields, replace

from simulator.errors import SpecsimError
from simulator.latency.serving import (_SGLANG_AR_SIZES, _SGLANG_SD_SIZES, _VLLM_V0_SIZES,
                                       _VLLM_V1_SIZES, EngineCosts)

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
        piecewise_kernels_per_layer=3,
        sources={
            "piecewise_kernels_per_layer": "vLLM V1 piecewise CUDA graphs (vllm/config/compilation.py "
                                           "splitting_ops: the attention op): per layer the "
                                           "attention op runs eager (reshape_and_cache + attention, "
                                           "2 launches) between captured pieces (1 replay)",
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

