"""Runner behaviour across sweep points: each point's figures are its own."""
from conftest import run_dict, scenario_dict


def test_profile_stats_are_per_sweep_point():
    """A deployment is resolved once for a whole sweep; its profile backend's call counts in
    each row must be that run's (one target forward per engine step), not a running total."""
    dep = {"name": "sd", "target": "llama-3.1-70b", "draft": "llama-3.2-1b", "gpu": "h100-sxm",
           "tp": 4, "strategy": "sd", "gamma": 4, "acceptance": {"alpha": 0.7},
           "latency": {"backend": "profile"}, "draft_latency": {"backend": "calibrated"}}
    d = scenario_dict([dep], requests=40, arrival={"process": "closed", "concurrency": 1},
                      sweep={"param": "concurrency", "values": [1, 4, 8]})
    rows = run_dict(d).summary["deployments"]
    assert len(rows) == 3
    for row in rows:
        stats = row["latency_stats"]["target"]
        assert stats["calls"] == row["steps"] > 0
        assert 0.0 < stats["measured_share"] <= 1.0
