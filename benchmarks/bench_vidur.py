"""Vidur's own 10,000-request workload (issue 13): Llama-2-70B on 2x A100-80GB (TP2) timed from
the measured profile profiles/a100-80gb-sxm/llama-2-70b-hf/tp2, chunked prefill 512, at most 128
running sequences, splitwise_conv lengths (prompts up to 3584, outputs up to 512 tokens),
Poisson arrivals at 1 req/s.

Target: <= 1 s process wall on a quiet 2-core host. Prints the process wall (from this script's
first line, imports included), the run's wall and its ratio to 1,000,000 bare SimPy timeouts
timed in the same process. Under specsim's vLLM-faithful KV sizing this deployment cannot carry
1 req/s (its KV cache holds far fewer sequences than Vidur's), so the queue grows all run; the
script says so and also times a rate it carries (--carried, default 0.3 req/s).

    python benchmarks/bench_vidur.py [--rate 1.0] [--carried 0.3] [--requests 10000] [--reference]
"""
from __future__ import annotations

import time

T0 = time.perf_counter()

import argparse  # noqa: E402

from _bench import conv_lengths, line, peak_rss_gb, simpy_reference, simulate  # noqa: E402

# Llama-2-70B's public config (huggingface.co/meta-llama/Llama-2-70b-hf config.json), named as
# the measured profile's model so profiles/a100-80gb-sxm/llama-2-70b-hf/tp2 is found.
LLAMA2_70B = {"name": "llama-2-70b-hf", "n_layers": 80, "hidden": 8192, "n_heads": 64,
              "n_kv_heads": 8, "head_dim": 128, "ffn": 28672, "vocab": 32000, "max_position": 4096}


def scenario(requests: int, rate: float) -> dict:
    return {
        "name": "vidur-10k", "seed": 1,
        "workload": {
            "requests": requests, "arrival": {"process": "poisson", "rate_per_s": rate},
            "prompt_tokens": conv_lengths("num_prefill_tokens", max=3584),
            "output_tokens": conv_lengths("num_decode_tokens", max=512),
        },
        "deployments": [{
            "name": "llama2-70b-a100-tp2", "target": LLAMA2_70B, "gpu": "a100-80gb-sxm", "tp": 2,
            "strategy": "ar", "latency": {"backend": "profile"},
            "scheduler": {"chunked_prefill": True, "max_num_batched_tokens": 512, "max_num_seqs": 128},
        }],
    }


def run(requests: int, rate: float, ref_s: float, reference: bool) -> None:
    """Time one run (and, with reference, the single-step loop on the same workload)."""
    from simulator.analysis.metrics import summarise
    rec, dep, _, wall = simulate(scenario(requests, rate))
    m = summarise(rec, dep.gpus, dep.price_per_gpu_hour, None, None)
    carried = m["throughput_requests_per_s"] >= 0.95 * rate
    print(line(f"{rate} req/s", rec, wall, ref_s))
    print(f"  {'carried' if carried else 'OVERLOADED'}: served {m['throughput_requests_per_s']:.3f} "
          f"req/s, TTFT p50 {m['ttft_s']['p50']:.2f} s p99 {m['ttft_s']['p99']:.1f} s, "
          f"mean in system {rec.mean_in_system:.0f}, {rec.preemptions.sum():,} preemptions, "
          f"KV {rec.kv_blocks_total:,} blocks")
    if reference:
        ref_rec, _, _, ref_wall = simulate(scenario(requests, rate), macro_steps=False)
        print(line("  single steps", ref_rec, ref_wall, ref_s) + f" | the default {ref_wall / wall:.2f}x faster")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--rate", type=float, default=1.0)
    ap.add_argument("--carried", type=float, default=0.3, help="a rate the deployment carries")
    ap.add_argument("--reference", action="store_true", help="also time the single-step loop")
    a = ap.parse_args()
    ref = simpy_reference()
    run(a.requests, a.rate, ref, False)
    proc = time.perf_counter() - T0
    print(f"process wall {proc:.2f} s (imports, the 1M-timeout loop of {ref:.2f} s and the "
          f"{a.rate} req/s run; {proc - ref:.2f} s without the loop) | peak RSS {peak_rss_gb():.2f} GB")
    if a.reference:
        run(a.requests, a.rate, ref, True)
    if a.carried:
        run(a.requests, a.carried, ref, a.reference)


if __name__ == "__main__":
    main()
