"""One million requests, autoregressive, on the roofline (issue 13): Llama-3.1-8B on one H100,
splitwise_conv lengths, Poisson arrivals at --load of a measured capacity.

Target: <= 60 s wall and peak RSS under 2 GB, growing with requests, not steps. Prints the run's
wall, its ratio to 1,000,000 bare SimPy timeouts timed in the same process, steps and events,
and peak RSS after a 100k-request run and after the 1M run.

    python benchmarks/bench_1m.py [--requests 1000000] [--load 0.8]
"""
from __future__ import annotations

import argparse

from _bench import conv_lengths, line, peak_rss_gb, simpy_reference, simulate



def scenario(requests: int, arrival: dict) -> dict:
    return {
        "name": "bench-1m", "seed": 1,
        "workload": {
            "requests": requests, "arrival": arrival,
            "prompt_tokens": conv_lengths("num_prefill_tokens", repeat=True),
            "output_tokens": conv_lengths("num_decode_tokens", repeat=True),
        },
        "deployments": [{"name": "8b-ar", "target": "llama-3.1-8b", "gpu": "h100-sxm",
                         "strategy": "ar", "latency": {"backend": "roofline"}}],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=1_000_000)
    ap.add_argument("--load", type=float, default=0.8)
    a = ap.parse_args()
    ref_s = simpy_reference()
    print(f"reference loop: 1,000,000 SimPy timeouts in {ref_s:.2f} s")
    sat, _, _, w = simulate(scenario(4000, {"process": "closed", "concurrency": 1024}))
    cap = sat.finish.shape[0] / float(sat.finish.max())
    rate = a.load * cap
    print(f"capacity {cap:.1f} req/s (closed loop, measured in {w:.1f} s); Poisson at {rate:.1f} req/s")
    for n in sorted({min(100_000, a.requests), a.requests}):
        rec, _, _, wall = simulate(scenario(n, {"process": "poisson", "rate_per_s": rate}))
        print(line(f"{n:,} requests", rec, wall, ref_s) + f" | peak RSS so far {peak_rss_gb():.2f} GB")
        del rec
    ok = wall <= 60 and peak_rss_gb() < 2
    print(f"targets (<= 60 s wall, < 2 GB): {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
