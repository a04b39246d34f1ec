"""Where macro-steps pay (issue 13): the engine's wall time on five workloads at several values of
the run threshold (simulator/engine/macro.py MIN_RUN, MIN_RUN_PRICEY), as a ratio to 1,000,000
bare SimPy timeouts timed in the same process, with the steps per SimPy event.

The workloads: bench_core's SD and bench_1m's AR in open loop at 80% of capacity, SD and AR in
saturated closed loops, and Vidur's workload (profile backend) at 1 and 0.3 req/s. The outputs
are the same at every threshold (runs reproduce single steps); only the wall time moves.
`off` runs single steps only.

    python benchmarks/run_threshold.py [--values 4 12 off] [--requests 20000]
"""
from __future__ import annotations

import argparse

import bench_1m
import bench_core
import bench_vidur
from _bench import simpy_reference, simulate


def workloads(n: int) -> dict:
    return {
        "sd open loop (bench_core)": bench_core.scenario(
            n, {"process": "poisson", "rate_per_s": 6.38}, "roofline"),
        "ar open loop (bench_1m)": bench_1m.scenario(n, {"process": "poisson", "rate_per_s": 16.3}),
        "sd closed loop, 64 in flight": bench_core.scenario(
            n // 6, {"process": "closed", "concurrency": 64}, "roofline"),
        "ar closed loop, 256 in flight": bench_1m.scenario(
            n // 3, {"process": "closed", "concurrency": 256}),
        "vidur, profile, 1 req/s": bench_vidur.scenario(n // 4, 1.0),
        "vidur, profile, 0.3 req/s": bench_vidur.scenario(n // 7, 0.3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--values", nargs="+", default=["4", "12", "off"],
                    help="thresholds to time (both MIN_RUN and MIN_RUN_PRICEY), or 'off'")
    ap.add_argument("--requests", type=int, default=20_000)
    a = ap.parse_args()
    from simulator.engine import macro
    ref = simpy_reference()
    print(f"reference loop: 1,000,000 SimPy timeouts in {ref:.2f} s")
    for label, d in workloads(a.requests).items():
        cells = []
        for v in a.values:
            if v != "off":
                macro.MIN_RUN = macro.MIN_RUN_PRICEY = int(v)
            rec, _, _, wall = simulate(d, macro_steps=v != "off")
            cells.append(f"{v}: {wall / ref:.2f}x ({rec.steps / rec.events:.1f} steps/event)")
        print(f"{label}: " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
