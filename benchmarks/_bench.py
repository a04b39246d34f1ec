"""Shared by the engine benchmarks: the in-process reference loop (1,000,000 bare SimPy timeouts,
so figures taken on a shared host can be compared as ratios), one simulation run timed, and the
process's peak RSS."""
from __future__ import annotations

import resource
import time
from pathlib import Path

import simpy

ROOT = Path(__file__).resolve().parents[1]
TRACES = ROOT.parent / "shared/data/vidur/processed_traces"
CONV_TRACE = TRACES / "splitwise_conv.csv"


def conv_lengths(column: str, **extra) -> dict:
    """A length spec drawn from a column of Vidur's splitwise_conv trace (extra: max, repeat)."""
    return {"dist": "trace", "path": str(CONV_TRACE), "column": column, **extra}


def simpy_reference(n: int = 1_000_000) -> float:
    """Seconds for one SimPy process to yield n timeouts (the host's speed yardstick)."""
    env = simpy.Environment()

    def loop():
        for _ in range(n):
            yield env.timeout(1.0)

    env.process(loop())
    t0 = time.perf_counter()
    env.run()
    return time.perf_counter() - t0


def simulate(d: dict, macro_steps: bool = True, index: int = 0):
    """(records, resolved deployment, requests, seconds in Simulation.run) of one scenario dict."""
    from simulator.config.loading import parse_scenario
    from simulator.config.workload import generate
    from simulator.deploy.deployments import resolve
    from simulator.engine.simulation import Simulation
    sc = parse_scenario(d)
    dep = resolve(sc.deployments[index], index, ROOT)
    req = generate(sc.workload, sc.seed, ROOT)
    sim = Simulation(dep, req, seed=1, macro_steps=macro_steps)
    t0 = time.perf_counter()
    rec = sim.run()
    return rec, dep, req, time.perf_counter() - t0


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def line(label: str, rec, wall: float, ref_s: float) -> str:
    """One result line: wall, its ratio to the reference loop, steps, events, rates."""
    n = rec.finish.shape[0]
    return (f"{label}: {wall:.2f} s wall = {wall / ref_s:.2f}x the 1M-timeout loop | "
            f"{rec.steps:,} steps in {rec.events:,} events ({rec.steps / rec.events:.1f} steps/event) | "
            f"{wall / rec.steps * 1e6:.1f} us/step | {n / wall:,.0f} simulated requests/s wall")
