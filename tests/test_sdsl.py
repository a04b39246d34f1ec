"""SDSL laws (simulator/physics/sdsl.py) and the `sdsl` / `fit-alpha` commands (simulator/cli/sdsl.py)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import typer
from scipy.optimize import minimize_scalar
from typer.testing import CliRunner

from simulator.cli import sdsl as cli_sdsl
from simulator.physics import sdsl
from simulator.hardware.models import MODELS
from simulator.physics.sdsl import SDSLError

CASES = [(a, m, n) for a in (0.3, 0.5, 0.6, 0.75, 0.9, 0.97)
         for m, n in ((70e9, 189e6), (13e9, 122e6), (7e9, 1e9), (1e9, 1e8), (110e9, 20e6))]


def _brute_force_gamma(alpha: float, n: float, m: float, upper: float) -> float:
    # Direct maximisation of T(gamma), written out here independently of the library.
    def neg_t(g):
        return -(1 - alpha ** (g + 1)) / ((1 - alpha) * 2 * (g * n + m)) * 2 * m

    return minimize_scalar(neg_t, bounds=(0.0, upper), method="bounded", options={"xatol": 1e-10}).x


# ---------------------------------------------------------------- gamma*, T*

def test_gamma_star_published_example():
    assert sdsl.optimal_gamma(0.6, 189e6, 70e9) == pytest.approx(9.322, abs=5e-4)
    assert sdsl.best_integer_gamma(0.6, 189e6, 70e9) == 9


@pytest.mark.parametrize("alpha,m,n", CASES)
def test_gamma_star_matches_brute_force(alpha, m, n):
    g = sdsl.optimal_gamma(alpha, n, m)
    assert g > 0
    assert g == pytest.approx(_brute_force_gamma(alpha, n, m, upper=4 * g + 50), abs=1e-3)


def test_gamma_star_when_alpha_power_underflows():
    # M/N = 1e5: alpha^(M/N) underflows to 0, the log-form W_{-1} path must still be exact.
    alpha, n, m = 0.6, 1e6, 1e11
    g = sdsl.optimal_gamma(alpha, n, m)
    assert math.isfinite(g)
    assert g == pytest.approx(_brute_force_gamma(alpha, n, m, upper=200), abs=1e-3)
    assert sdsl.optimal_tokens_per_flop(alpha, n, m) == pytest.approx(
        sdsl.tokens_per_flop(alpha, g, n, m), rel=1e-10)


@pytest.mark.parametrize("alpha,m,n", CASES)
def test_t_star_equals_t_at_gamma_star(alpha, m, n):
    g = sdsl.optimal_gamma(alpha, n, m)
    t_star = sdsl.optimal_tokens_per_flop(alpha, n, m)
    assert t_star == pytest.approx(sdsl.tokens_per_flop(alpha, g, n, m), rel=1e-10)
    for other in (g * 0.9, g * 1.1, g + 1):
        assert sdsl.tokens_per_flop(alpha, other, n, m) < t_star


@pytest.mark.parametrize("alpha,m,n", CASES[::3])
def test_best_integer_gamma_is_integer_argmax(alpha, m, n):
    ks = np.arange(1, 400)
    t = [sdsl.tokens_per_flop(alpha, k, n, m) for k in ks]
    assert sdsl.best_integer_gamma(alpha, n, m) == ks[int(np.argmax(t))]
    assert sdsl.best_integer_gamma(alpha, n, m, gamma_max=2) == min(2, ks[int(np.argmax(t))])


def test_best_integer_gamma_is_at_least_one_when_speculation_cannot_pay():
    assert sdsl.optimal_gamma(0.6, 65e9, 70e9) < 0
    assert sdsl.best_integer_gamma(0.6, 65e9, 70e9) == 1


# ---------------------------------------------------------------- Leviathan

def test_expected_tokens_and_limits():
    assert sdsl.expected_tokens_per_round(0.5, 3) == pytest.approx(1 + 0.5 + 0.25 + 0.125)
    assert sdsl.expected_tokens_per_round(1.0, 4) == 5.0
    assert sdsl.expected_tokens_per_round(1 - 1e-13, 4) == pytest.approx(5.0, rel=1e-9)
    assert sdsl.expected_tokens_per_round(0.0, 4) == 1.0


def test_leviathan_speedup_with_flop_cost_ratio_equals_t_over_t_ar():
    alpha, n, m = 0.7, 300e6, 30e9
    for g in (1, 4, 9.5):
        flops = sdsl.tokens_per_flop(alpha, g, n, m) / sdsl.ar_tokens_per_flop(m)
        assert sdsl.leviathan_speedup(alpha, g, n / m) == pytest.approx(flops, rel=1e-12)
    # Leviathan Table: alpha 0.8, gamma 4, c 0.05 -> (1 - 0.8^5) / (0.2 * 1.2)
    assert sdsl.leviathan_speedup(0.8, 4, 0.05) == pytest.approx((1 - 0.8 ** 5) / 0.2 / 1.2)


def test_latency_gamma_under_flop_costs_matches_closed_form():
    # A verify that costs one target step whatever gamma, and draft/target time ratio N/M,
    # is SDSL's cost model: the latency search must pick the closed form's integer gamma.
    alpha, n, m = 0.65, 189e6, 70e9
    g, s = sdsl.best_latency_gamma(alpha, 2 * m, 2 * n, lambda _g: 2 * m, gamma_max=40)
    assert g == sdsl.best_integer_gamma(alpha, n, m)
    assert s == pytest.approx(sdsl.tokens_per_flop(alpha, g, n, m) * 2 * m, rel=1e-12)
    # An expensive verify (cost growing with gamma) must pull gamma down.
    g2, _ = sdsl.best_latency_gamma(alpha, 1.0, 0.01, lambda k: 1.0 + 0.2 * k, gamma_max=40)
    assert g2 < g


# ---------------------------------------------------------------- laws and constants

def test_perplexity_law_constants():
    n, d = 70e9, 15e12
    assert sdsl.perplexity(n, d) == pytest.approx(
        math.exp(1.8172 + 482.01 / n ** 0.3478 + 2085.43 / d ** 0.3658), rel=1e-12)
    assert sdsl.perplexity(n, d, sdsl.PPL_LAWS["chinchilla"]) == pytest.approx(
        math.exp(1.69 + 406.4 / n ** 0.34 + 410.7 / d ** 0.28), rel=1e-12)
    assert sdsl.PPL_LAWS["besiroglu"] is sdsl.BESIROGLU_2024
    assert sdsl.perplexity(1e8, d) > sdsl.perplexity(1e9, d) > sdsl.perplexity(1e10, d) > 1


def test_alpha_law_and_band():
    assert sdsl.alpha_from_ppl(10.0, 5.0) == pytest.approx(-0.0067 * 10 + 0.01297 * 5 + 0.642)
    lo, mid, hi = sdsl.alpha_band(10.0, 5.0)
    assert mid - lo == pytest.approx(math.sqrt(0.00128)) and hi - mid == pytest.approx(math.sqrt(0.00128))
    custom = sdsl.AlphaLaw(A=0.0, B=0.0, C=0.5)
    assert sdsl.alpha_from_ppl(10.0, 5.0, custom) == 0.5
    # Bigger drafts accept more.
    assert sdsl.alpha_from_sizes(1e9, 70e9) > sdsl.alpha_from_sizes(1e8, 70e9)


def test_draft_size_optimum_reproduces_linear_rule():
    """At D = 15e12 (the default; see the module docstring for the D dependence)."""
    for m in (13e9, 30e9, 50e9, 70e9, 90e9, 110e9):
        opt = sdsl.optimal_draft_size(m)
        assert opt.n_params == pytest.approx(sdsl.optimal_draft_size_linear(m), rel=0.15)
        # ...and it really is the maximum of T* over N.
        for f in (0.8, 1.25):
            n = opt.n_params * f
            assert sdsl.optimal_tokens_per_flop(sdsl.alpha_from_sizes(n, m), n, m) < opt.tokens_per_flop


def test_linear_rule_published_points():
    assert sdsl.optimal_draft_size_linear(13e9) == pytest.approx(122e6, rel=0.01)
    assert sdsl.optimal_draft_size_linear(70e9) == pytest.approx(277e6, rel=0.01)
    assert sdsl.optimal_draft_size_linear(110e9) == pytest.approx(385e6, rel=0.01)


def test_recomputed_rule_is_close_to_published():
    rule = sdsl.fit_draft_size_rule(np.linspace(13e9, 110e9, 5))
    assert rule.mu == pytest.approx(2.71e-3, rel=0.1)
    assert rule.m0 == pytest.approx(8.71e7, rel=0.15)
    # Other constants give another line: the recomputation is not a constant echo.
    other = sdsl.fit_draft_size_rule(np.linspace(13e9, 110e9, 5), ppl_law=sdsl.CHINCHILLA_2022)
    assert other.mu != pytest.approx(rule.mu, rel=0.01)


# ---------------------------------------------------------------- fit

def test_fit_recovers_coefficients_from_noisy_data():
    rng = np.random.default_rng(7)
    a_true, b_true, c_true, sd = -0.008, 0.015, 0.61, 0.01
    x = rng.uniform(8, 30, 500)
    y = rng.uniform(3, 12, 500)
    alpha = a_true * x + b_true * y + c_true + rng.normal(0, sd, 500)
    fit = sdsl.fit_alpha_law(x, y, alpha)
    assert fit.law.A == pytest.approx(a_true, abs=5e-4)
    assert fit.law.B == pytest.approx(b_true, abs=1e-3)
    assert fit.law.C == pytest.approx(c_true, abs=0.01)
    assert fit.rmse == pytest.approx(sd, rel=0.1)
    assert 0.8 < fit.r2 < 1.0
    assert fit.n_rows == 500


def test_fit_rejects_degenerate_input():
    with pytest.raises(SDSLError, match="at least 4 rows"):
        sdsl.fit_alpha_law([10, 11, 12], [5, 6, 7], [0.6, 0.6, 0.6])
    with pytest.raises(SDSLError, match="collinear"):
        sdsl.fit_alpha_law([10, 11, 12, 13], [5, 6, 7, 8], [0.6, 0.61, 0.62, 0.6])


# ---------------------------------------------------------------- errors, never NaN

@pytest.mark.parametrize("call,match", [
    (lambda: sdsl.optimal_gamma(1.0, 1e8, 1e10), "alpha"),
    (lambda: sdsl.optimal_gamma(0.0, 1e8, 1e10), "alpha"),
    (lambda: sdsl.optimal_gamma(float("nan"), 1e8, 1e10), "alpha"),
    (lambda: sdsl.optimal_gamma(0.6, 1e10, 1e10), "N = .* >= M"),
    (lambda: sdsl.optimal_tokens_per_flop(0.6, 2e10, 1e10), "smaller than target"),
    (lambda: sdsl.tokens_per_flop(0.6, 3, -1, 1e10), "draft parameter count"),
    (lambda: sdsl.tokens_per_flop(0.6, -1, 1e8, 1e10), "gamma"),
    (lambda: sdsl.perplexity(0, 1e12), "parameter count"),
    (lambda: sdsl.perplexity(1e9, -5), "training tokens"),
    (lambda: sdsl.alpha_from_ppl(1.0, 5.0), "draft perplexity must be > 1"),
    (lambda: sdsl.alpha_from_ppl(10.0, 0.5), "target perplexity must be > 1"),
    (lambda: sdsl.alpha_from_ppl(200.0, 5.0), r"alpha from the law .* must be in \(0, 1\)"),
    (lambda: sdsl.alpha_from_sizes(1e9, 1e9), "smaller than target"),
    (lambda: sdsl.expected_tokens_per_round(1.5, 3), "alpha"),
])
def test_out_of_range_inputs_raise(call, match):
    with pytest.raises(SDSLError, match=match) as info:
        call()
    assert isinstance(info.value, ValueError)


def test_optimiser_skips_sizes_where_the_law_breaks():
    # At n_min = 1e6 the draft ppl (~300) makes the law's alpha negative: skipped, not NaN.
    with pytest.raises(SDSLError):
        sdsl.alpha_from_sizes(1e6, 70e9)
    opt = sdsl.optimal_draft_size(70e9, n_min=1e6)
    assert all(math.isfinite(v) for v in (opt.n_params, opt.alpha, opt.gamma_opt, opt.tokens_per_flop))
    with pytest.raises(SDSLError, match="no acceptance rate"):
        sdsl.optimal_draft_size(70e9, n_min=1e5, n_max=2e6)


# ---------------------------------------------------------------- CLI

@pytest.fixture(scope="module")
def app():
    a = typer.Typer()
    cli_sdsl.register(a)
    return a


@pytest.fixture(scope="module")
def report_70b(app):
    result = CliRunner().invoke(app, ["sdsl", "--target", "llama-3.1-70b", "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)  # the whole of stdout is one JSON object


def test_cli_sdsl_json_keys_and_values(report_70b):
    r = report_70b
    for key in ("alpha", "gamma_opt", "n_star_params", "speedup", "candidates"):
        assert key in r
    m = MODELS["llama-3.1-70b"].params
    assert r["n_star_params"] == pytest.approx(2.71e-3 * m + 8.71e7)
    assert r["gamma_opt"] == pytest.approx(sdsl.optimal_gamma(r["alpha"], r["n_star_params"], m))
    assert r["speedup"] > 1
    names = {c["draft"] for c in r["candidates"]}
    expected = {k for k, v in MODELS.items() if v.params < m and not k.startswith("tiny-")}
    assert names == expected
    for c in r["candidates"]:
        assert {"draft", "alpha", "gamma_opt", "speedup_flops", "speedup_latency"} <= set(c)
        assert 0 < c["alpha"] < 1 and math.isfinite(c["speedup_latency"])
        assert 1 <= c["gamma_latency"] <= 16
    speedups = [c["speedup_latency"] for c in r["candidates"]]
    assert speedups == sorted(speedups, reverse=True)


def test_cli_sdsl_with_draft(app):
    result = CliRunner().invoke(app, ["sdsl", "--target", "llama-3.1-70b", "--draft", "llama-3.2-1b",
                                      "--gpu", "h100-sxm", "--tp", "4", "--json"])
    assert result.exit_code == 0, result.output
    r = json.loads(result.stdout)
    n, m = MODELS["llama-3.2-1b"].params, MODELS["llama-3.1-70b"].params
    assert r["alpha"] == pytest.approx(sdsl.alpha_from_sizes(n, m, 15e12))
    assert r["speedup"] == pytest.approx(sdsl.optimal_tokens_per_flop(r["alpha"], n, m) * 2 * m)
    assert r["speedup_latency"] > 1 and r["tp"] == 4


def test_cli_sdsl_human_output(app):
    result = CliRunner().invoke(app, ["sdsl", "--target", "qwen2.5-14b"])
    assert result.exit_code == 0, result.output
    assert "gamma*" in result.stdout and "qwen2.5-0.5b" in result.stdout


@pytest.mark.parametrize("args,needle", [
    (["sdsl", "--target", "llama-70b"], "valid names: "),
    (["sdsl", "--target", "llama-3.1-70b", "--draft", "llama-3.1-405b"], "smaller than target"),
    (["sdsl", "--target", "llama-3.1-70b", "--gpu", "h900"], "unknown GPU 'h900'"),
    (["sdsl", "--target", "llama-3.1-70b", "--tp", "3"], "tp=3"),
])
def test_cli_sdsl_bad_input_exits_2(app, args, needle):
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert needle in result.stderr
    assert isinstance(result.exception, SystemExit)  # no traceback
    if "valid names" in needle:
        assert "llama-3.1-70b" in result.stderr and "tiny-target" in result.stderr


def test_cli_fit_alpha(app, tmp_path):
    rng = np.random.default_rng(3)
    x, y = rng.uniform(8, 30, 60), rng.uniform(3, 12, 60)
    alpha = -0.0067 * x + 0.01297 * y + 0.642 + rng.normal(0, 0.002, 60)
    path = tmp_path / "rows.csv"
    path.write_text("draft_ppl,target_ppl,alpha\n" + "".join(f"{a},{b},{c}\n" for a, b, c in zip(x, y, alpha)))
    result = CliRunner().invoke(app, ["fit-alpha", str(path), "--json"])
    assert result.exit_code == 0, result.output
    r = json.loads(result.stdout)
    assert r["A"] == pytest.approx(-0.0067, abs=5e-4) and r["B"] == pytest.approx(0.01297, abs=1e-3)
    assert r["C"] == pytest.approx(0.642, abs=0.01) and r["n_rows"] == 60
    human = CliRunner().invoke(app, ["fit-alpha", str(path)])
    assert human.exit_code == 0 and "RMSE" in human.stdout


@pytest.mark.parametrize("content,needle", [
    ("draft_ppl,alpha\n10,0.6\n", "missing column(s) target_ppl"),
    ("draft_ppl,target_ppl,alpha\n10,5,0.6\n11,abc,0.6\n", "column target_ppl, row 3"),
    ("", "cannot read as CSV"),
    # Issue 15: alpha 1.5 used to be fitted (R^2 0.93); an acceptance rate lies in (0, 1].
    ("draft_ppl,target_ppl,alpha\n10,5,0.6\n11,5,1.5\n", "column alpha, row 3"),
    ("draft_ppl,target_ppl,alpha\n10,5,0.6\n11,5,0\n", "column alpha, row 3"),
    ("draft_ppl,target_ppl,alpha\n0.5,5,0.6\n", "column draft_ppl, row 2"),
])
def test_cli_fit_alpha_bad_file_exits_2(app, tmp_path, content, needle):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    result = CliRunner().invoke(app, ["fit-alpha", str(path)])
    assert result.exit_code == 2
    assert needle in result.stderr and str(path) in result.stderr
    assert isinstance(result.exception, SystemExit)


def test_cli_fit_alpha_missing_file(app, tmp_path):
    result = CliRunner().invoke(app, ["fit-alpha", str(tmp_path / "nope.csv")])
    assert result.exit_code == 2 and "no such file" in result.stderr


def test_specsim_entry_point_runs_sdsl():
    """Through the installed `specsim` app (skipped until the core CLI module exists)."""
    pytest.importorskip("simulator.cli.core")
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "simulator.cli", "sdsl", "--target", "llama-3.1-70b", "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert {"alpha", "gamma_opt", "n_star_params", "speedup", "candidates"} <= set(json.loads(out.stdout))
    bad = subprocess.run(cmd[:5] + ["no-such-model"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "valid names" in bad.stderr and "Traceback" not in bad.stderr


def test_latency_ranking_uses_the_calibrated_roofline_scenarios_default_to(monkeypatch, tmp_path):
    """`specsim sdsl` ranks drafts at batch 1 under the same latency model a scenario gets by
    default (the calibrated roofline, with its per-layer kernel floor), and says which; without a
    calibration it says it fell back to the datasheet roofline. Catches the report left on the
    datasheet roofline (it prices a 1B draft's forward ~40% low on H100) or a silent fallback."""
    from simulator.analysis import sdsl_report as rep

    def report():
        r = rep.sdsl_report("llama-3.1-70b", "llama-3.2-1b", "h100-sxm", 4, 1, 1.5e13,
                            next(iter(sdsl.PPL_LAWS)), 1024, 8)
        return r["speedup_latency"], next(n for n in r["notes"] if n.startswith("latency model"))

    cal, note = report()
    assert "calibrated roofline" in note and "h100-sxm" in note
    monkeypatch.setattr(rep, "PROJECT_PROFILES", tmp_path)
    plain, note = report()
    assert "no calibration found" in note
    assert cal < plain  # the floor makes the draft dearer relative to the 70B target
