"""SDSL in scenarios: acceptance from the laws, the alpha band, `gamma: auto` (ideal and roofline)."""
import math

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from conftest import ROOT, run_dict, scenario_dict
from simulator.deploy import gamma as gamma_auto
from simulator.physics import sdsl
from simulator.hardware.gpus import GPUS
from simulator.hardware.models import MODELS
from simulator.cli import app
from simulator.deploy.deployments import resolve
from simulator.errors import SpecsimError
from simulator.deploy.gamma import choose_gamma
from simulator.config.loading import parse_scenario
from simulator.config.workload import Requests

M70, D1 = "llama-3.1-70b", "llama-3.2-1b"
IDEAL = {"backend": "ideal"}
LAW = {"sdsl": {"training_tokens": 15e12}}


def sd(name="sd", draft=D1, target=M70, tp=4, **kw):
    return {"name": name, "target": target, "draft": draft, "gpu": "h100-sxm", "tp": tp,
            "strategy": "sd", "gamma": "auto", "acceptance": LAW, **kw}


def resolved(dep, **workload):
    sc = parse_scenario(scenario_dict([dep], **workload))
    return resolve(sc.deployments[0], 0, ROOT), sc


def closed_requests(concurrency, n=256, prompt=1024, output=256):
    return Requests(np.full(n, prompt), np.full(n, output), np.full(n, np.nan), concurrency)


# ---------------------------------------------------------------- acceptance from the laws

def test_sdsl_perplexity_form_derives_the_law_alpha():
    dep, _ = resolved(sd(gamma=4, acceptance={"sdsl": {"draft_ppl": 18.2, "target_ppl": 6.1}}))
    expected = -0.0067 * 18.2 + 0.01297 * 6.1 + 0.642  # MODEL.md section 3, by hand
    assert dep.acceptance.alpha == pytest.approx(expected, abs=1e-12)
    assert dep.acceptance.alpha == sdsl.alpha_from_ppl(18.2, 6.1)
    assert dep.acceptance_sdsl["form"] == "perplexity" and dep.gamma == 4


@pytest.mark.parametrize("draft", ["opt-125m", "qwen2.5-0.5b", "llama-3.2-1b", "llama-3.1-8b"])
def test_sdsl_size_form_derives_the_law_alpha(draft):
    dep, _ = resolved(sd(draft=draft, draft_tp=1))
    n, m = MODELS[draft].params, MODELS[M70].params
    assert dep.acceptance.alpha == sdsl.alpha_from_sizes(n, m, 15e12)
    # the chain by hand: perplexity law (Besiroglu constants) then the affine law
    ppl = [math.exp(1.8172 + 482.01 / p ** 0.3478 + 2085.43 / 15e12 ** 0.3658) for p in (n, m)]
    assert dep.acceptance.alpha == pytest.approx(-0.0067 * ppl[0] + 0.01297 * ppl[1] + 0.642, abs=1e-12)


def test_sdsl_size_form_options():
    acc = {"sdsl": {"training_tokens": 2e12, "target_training_tokens": 1.5e13, "ppl_law": "chinchilla"}}
    dep, _ = resolved(sd(acceptance=acc))
    n, m = MODELS[D1].params, MODELS[M70].params
    expected = sdsl.alpha_from_sizes(n, m, 2e12, sdsl.CHINCHILLA_2022, target_training_tokens=1.5e13)
    assert dep.acceptance.alpha == expected
    assert expected != sdsl.alpha_from_sizes(n, m, 2e12)


def test_yaml_exponent_without_dot_is_accepted():
    # PyYAML reads 15e12 as a string; the schema still takes it as a number.
    d = yaml.safe_load("acceptance: {sdsl: {training_tokens: 15e12}}")
    dep, _ = resolved(sd(acceptance=d["acceptance"]))
    assert dep.acceptance_sdsl["training_tokens"] == 15e12


# ---------------------------------------------------------------- the band

def test_band_runs_three_variants_at_alpha_minus_plus_rmse(tmp_path):
    from simulator.run.report import markdown
    acc = {**LAW, "band": True}
    d = scenario_dict([{"name": "ar", "target": M70, "gpu": "h100-sxm", "tp": 4, "strategy": "ar",
                        "latency": IDEAL}, sd(acceptance=acc, latency=IDEAL)],
                      requests=6, arrival={"process": "closed", "concurrency": 1},
                      prompt={"dist": "fixed", "value": 16}, output={"dist": "fixed", "value": 1500})
    result = run_dict(d)
    rows = {r["name"]: r for r in result.summary["deployments"]}
    assert list(rows) == ["ar", "sd[alpha-]", "sd", "sd[alpha+]"]
    mid = sdsl.alpha_from_sizes(MODELS[D1].params, MODELS[M70].params, 15e12)
    rmse = math.sqrt(0.00128)
    for name, shift in (("sd[alpha-]", -rmse), ("sd", 0.0), ("sd[alpha+]", rmse)):
        assert rows[name]["config"]["alpha"] == pytest.approx(mid + shift, abs=1e-12)
        assert rows[name]["variant_of"] == "sd"
        # each variant's lookahead is chosen at its own alpha
        g = sdsl.best_integer_gamma(mid + shift, MODELS[D1].params, MODELS[M70].params)
        assert rows[name]["config"]["gamma"] == g
    tput = [rows[n]["throughput_tokens_per_s"] for n in ("sd[alpha-]", "sd", "sd[alpha+]")]
    assert tput[0] < tput[1] < tput[2]
    md = markdown(result, "t.yaml")
    assert "Uncertainty band" in md and "sd[alpha+]" in md and f"{rmse:.4f}" in md
    (group,) = result.summary["sdsl"]
    assert group["n_star_params"] == pytest.approx(sdsl.optimal_draft_size_linear(MODELS[M70].params))
    assert f"N* = mu*M + M0 = {group['n_star_params'] / 1e6:.0f}M" in md


# ---------------------------------------------------------------- gamma auto, ideal backend

@pytest.mark.parametrize("draft,draft_tp", [("opt-125m", 4), ("llama-3.2-1b", 4), ("llama-3.2-3b", 4),
                                            ("llama-3.1-8b", 4), ("llama-3.2-1b", 1)])
def test_gamma_auto_ideal_equals_closed_form(draft, draft_tp):
    dep, sc = resolved(sd(draft=draft, draft_tp=draft_tp, latency=IDEAL))
    alpha = dep.acceptance.alpha
    choice = choose_gamma(dep, sc.workload, closed_requests(1))
    # a draft at tp 1 next to a tp-4 target is 4x slower per FLOP: the closed form sees c = 4N/M
    n = MODELS[draft].params * 4 / draft_tp
    m = MODELS[M70].params
    assert choice.method == "closed_form"
    assert choice.gamma_star == pytest.approx(sdsl.optimal_gamma(alpha, n, m), rel=1e-12)
    brute = max(range(1, 200), key=lambda g: sdsl.tokens_per_flop(alpha, g, n, m))
    assert choice.gamma == brute == sdsl.best_integer_gamma(alpha, n, m)
    assert choice.gamma in (math.floor(choice.gamma_star), math.ceil(choice.gamma_star))
    # the ideal backend's own cost, searched like the roofline: the same whole gamma
    curve = gamma_auto.throughput_curve(dep.target_latency, dep.draft_latency, alpha, 1, 100, 40)
    assert int(np.argmax(curve)) + 1 == choice.gamma


def test_ideal_batch1_run_reaches_t_star():
    """Closed loop, batch 1, ideal backend, gamma auto: simulated tokens per FLOP within 1% of T*.

    The ideal backend charges 2 * params / (peak * tp) seconds per forward pass, so the FLOPs a
    run spent are busy seconds x peak x tp (target and draft here share the same 4 GPUs).
    """
    d = scenario_dict([sd(latency=IDEAL)], requests=16,
                      arrival={"process": "closed", "concurrency": 1},
                      prompt={"dist": "fixed", "value": 16}, output={"dist": "fixed", "value": 3000})
    (row,) = run_dict(d).summary["deployments"]
    n, m = MODELS[D1].params, MODELS[M70].params
    alpha = sdsl.alpha_from_sizes(n, m, 15e12)
    assert row["config"]["gamma"] == sdsl.best_integer_gamma(alpha, n, m) == 7
    flops = sum(row["busy_breakdown_s"].values()) * GPUS["h100-sxm"].peak_flops("bf16") * 4
    measured = row["output_tokens"] / flops
    t_star = sdsl.optimal_tokens_per_flop(alpha, n, m)
    assert measured == pytest.approx(t_star, rel=0.01)
    assert row["gpu_busy_fraction"] == pytest.approx(1.0, abs=1e-9)
    # a wrong lookahead is visibly off T*: gamma 3 is 11% below
    assert sdsl.tokens_per_flop(alpha, 3, n, m) < 0.9 * t_star
    assert row["gamma_choice"]["method"] == "closed_form"


# ---------------------------------------------------------------- gamma auto, roofline

def _round_time_by_hand(dep, gamma, b, ctx):
    """The engine's SD round from the backends' forward(): gamma draft steps, one verify, overhead."""
    c = np.full(b, ctx)
    t = sum(dep.draft_latency.forward(np.ones(b, np.int64), c + j, b).sum() for j in range(gamma))
    t += dep.target_latency.forward(np.full(b, gamma + 1), c, b * (gamma + 1)).sum()
    return t + dep.target_latency.step_overhead_s


@pytest.mark.parametrize("concurrency", [1, 8, 64])
def test_gamma_auto_roofline_is_the_argmax_of_its_curve(concurrency):
    # engine "ideal": the round by hand below is the backends' forwards plus their constant
    # step overhead (test_engine_costs checks the curve under an engine preset)
    dep, sc = resolved(sd(draft_tp=1, engine={"preset": "ideal"}))
    alpha = dep.acceptance.alpha
    choice = choose_gamma(dep, sc.workload, closed_requests(concurrency))
    assert choice.method == "latency_search"
    assert choice.operating_batch == concurrency and choice.context_tokens == 1024 + 128
    tput = [c["tokens_per_s"] for c in choice.curve]
    assert [c["gamma"] for c in choice.curve] == list(range(1, 17))
    assert choice.gamma == int(np.argmax(tput)) + 1
    for g in (1, choice.gamma, 16):
        expected = concurrency * (1 - alpha ** (g + 1)) / (1 - alpha) / _round_time_by_hand(
            dep, g, concurrency, 1152)
        assert tput[g - 1] == pytest.approx(expected, rel=1e-9)
    b = concurrency
    step = dep.target_latency.forward(np.ones(b, np.int64), np.full(b, 1152), b).sum()
    ar = b / (step + dep.target_latency.step_overhead_s)
    assert choice.ar_tokens_per_s == pytest.approx(ar, rel=1e-9)


def test_gamma_auto_roofline_shrinks_with_batch():
    dep, sc = resolved(sd(draft_tp=1))
    gammas = [choose_gamma(dep, sc.workload, closed_requests(c)).gamma for c in (1, 32, 256)]
    assert gammas[0] > gammas[1] > gammas[2]
    # replicas share the concurrency; max_num_seqs caps the batch
    dep2, sc2 = resolved(sd(draft_tp=1, replicas=2, scheduler={"max_num_seqs": 16}))
    assert choose_gamma(dep2, sc2.workload, closed_requests(64)).operating_batch == 16
    assert choose_gamma(dep2, sc2.workload, closed_requests(20)).operating_batch == 10


def test_gamma_auto_open_loop_uses_littles_law():
    dep, _ = resolved(sd(draft_tp=1))
    alpha = dep.acceptance.alpha
    gammas, batches = [], []
    for rate in (0.2, 2.0, 1000.0):
        arrival = {"process": "poisson", "rate_per_s": rate}
        sc = parse_scenario(scenario_dict([sd(draft_tp=1)], arrival=arrival))
        req = Requests(np.full(50, 1024), np.full(50, 256), np.arange(50.0), None)
        choice = choose_gamma(dep, sc.workload, req)
        b, ctx = choice.operating_batch, choice.context_tokens
        offered = rate * 256
        def best(k):
            return gamma_auto.throughput_curve(dep.target_latency, dep.draft_latency, alpha, k,
                                               ctx).max()
        if b < 50:  # the smallest batch whose throughput covers the offered tokens/s
            assert best(b) >= offered and (b == 1 or best(b - 1) < offered)
        else:  # overload: capped at max_num_seqs (here the request count)
            assert best(b) < offered and "overloaded" in choice.basis
        gammas.append(choice.gamma)
        batches.append(b)
    assert batches[0] < batches[1] < batches[2] == 50
    assert gammas[0] >= gammas[1] > gammas[2]


def test_gamma_auto_per_sweep_point_and_report():
    from simulator.run.report import markdown
    d = scenario_dict([sd(draft_tp=1)], requests=32, arrival={"process": "closed", "concurrency": 1},
                      output={"dist": "fixed", "value": 32},
                      sweep={"param": "concurrency", "values": [1, 32]})
    result = run_dict(d)
    rows = result.summary["deployments"]
    assert [r["gamma_choice"]["operating_batch"] for r in rows] == [1, 32]
    assert rows[0]["config"]["gamma"] > rows[1]["config"]["gamma"]
    md = markdown(result, "t.yaml")
    assert "## Lookahead (gamma: auto)" in md
    assert f"gamma {rows[1]['config']['gamma']}: latency search over gamma 1..16 at batch 32" in md


# ---------------------------------------------------------------- bad inputs

def _with(**acc_or_dep):
    return lambda dep: dep.update(acc_or_dep)


BAD = {
    "ppl <= 1": (_with(acceptance={"sdsl": {"draft_ppl": 0.9, "target_ppl": 6.1}}),
                 "deployments[0].acceptance.sdsl.draft_ppl", "greater than 1"),
    "alpha < 0 after the law": (_with(acceptance={"sdsl": {"draft_ppl": 150, "target_ppl": 6.1}}),
                                "deployments[0].acceptance.sdsl", "must be in (0, 1)"),
    "alpha > 1 after the law": (_with(acceptance={"sdsl": {"draft_ppl": 2, "target_ppl": 50}}),
                                "deployments[0].acceptance.sdsl", "must be in (0, 1)"),
    "band leaves (0, 1)": (_with(acceptance={"sdsl": {"draft_ppl": 2, "target_ppl": 27}, "band": True}),
                           "deployments[0].acceptance.sdsl", "alpha + RMSE must be in (0, 1)"),
    "N >= M": (_with(draft="llama-3.1-70b", target="llama-3.1-8b"),
               "deployments[0].draft", "must be smaller than target"),
    "tiny training set": (_with(acceptance={"sdsl": {"training_tokens": 1e3}}),
                          "deployments[0].acceptance.sdsl", "must be in (0, 1)"),
    "half a ppl pair": (_with(acceptance={"sdsl": {"draft_ppl": 18.2}}),
                        "deployments[0].acceptance.sdsl", "give both"),
    "both forms": (_with(acceptance={"sdsl": {"draft_ppl": 18.2, "target_ppl": 6.1,
                                              "training_tokens": 1e12}}),
                   "deployments[0].acceptance.sdsl", "give either"),
    "typo in sdsl": (_with(acceptance={"sdsl": {"trainig_tokens": 1e12}}),
                     "deployments[0].acceptance.sdsl.trainig_tokens", "unknown key"),
    "band without sdsl": (_with(acceptance={"alpha": 0.7, "band": True}),
                          "deployments[0].acceptance", "'band' applies to 'sdsl'"),
    "auto with per_position": (_with(acceptance={"per_position": [0.8, 0.7]}),
                               "deployments[0]", "gamma: auto needs a single acceptance rate"),
    "auto with ssd": (_with(strategy="ssd"), "deployments[0]", "gamma: auto applies to strategy 'sd'"),
    "gamma neither int nor auto": (_with(gamma="best"), "deployments[0].gamma", "'auto'"),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_inputs_are_clear_errors(tmp_path, case):
    mutate, field, text = BAD[case]
    dep = sd(target="llama-3.1-8b", tp=1, draft_tp=1)
    mutate(dep)
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(scenario_dict([dep], requests=4)))
    r = CliRunner().invoke(app, ["check", str(p)])
    assert r.exit_code == 2, r.output
    msg = " ".join(r.output.split())
    assert "Traceback" not in msg and "nan" not in msg.lower()
    assert str(p) in msg and field in msg and text in msg, msg
    with pytest.raises(SpecsimError):  # the library raises the same, without the CLI
        sc = parse_scenario(scenario_dict([dep], requests=4))
        resolve(sc.deployments[0], 0, ROOT)
