"""The report files people look at: plots (simulator/run/plots.py), summary.html (html.py) and the
console tables (console.py), built from real summaries in tests/data/reports/.

Fixtures: tests/data/reports/{sweep,run}/ hold summary.json + requests.csv from
`specsim run tests/data/reports/<x>/scenario.yaml --out tests/data/reports/<x>` (summary.md
deleted); plan/plan.json is the run fixture's rows ranked under an SLO (the plan.json shape).
"""
from __future__ import annotations

import base64
import copy
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
from rich.console import Console

from simulator.run import console, html, plan_plots, plots

DATA = Path(__file__).parent / "data" / "reports"
SWEEP_STEMS = {"sweep_throughput", "sweep_latency", "speedup", "latency_cdf", "busy_breakdown"}
RUN_STEMS = {"latency_cdf", "busy_breakdown"}


def load(name: str) -> tuple[dict, pd.DataFrame]:
    return (json.loads((DATA / name / "summary.json").read_text()),
            pd.read_csv(DATA / name / "requests.csv"))


@pytest.fixture(scope="module")
def sweep_report(tmp_path_factory):
    s, r = load("sweep")
    out = tmp_path_factory.mktemp("sweep")
    return s, plots.write_plots(s, r, out), out


@pytest.fixture(scope="module")
def run_report(tmp_path_factory):
    s, r = load("run")
    out = tmp_path_factory.mktemp("run")
    return s, plots.write_plots(s, r, out), out


def future_keys(s: dict) -> dict:
    """The summary with keys the contract may gain (and some it may lose)."""
    s = copy.deepcopy(s)
    s.update(replications=3, window={"warmup_s": 10.0}, slo={"ttft_s": 0.5, "tpot_s": 0.02})
    for i, r in enumerate(s["deployments"]):
        r["overloaded"] = i == 1
        r["kv_capacity_tokens"] = 123456
        r["batch_seqs_p50"], r["batch_seqs_p99"] = 3.0, 7.0
        t = r["throughput_tokens_per_s"]
        r["ci"] = {"throughput_tokens_per_s": {"lo": 0.95 * t, "hi": 1.05 * t},
                   "tpot_s": {"p99": {"lo": 0.9 * r["tpot_s"]["p99"], "hi": 1.1 * r["tpot_s"]["p99"]}}}
    last = s["deployments"][-1]
    for k in ("busy_breakdown_s", "latency_stats", "config", "itl_s"):
        last.pop(k)
    for c in s.get("crossover", []):
        x = c["stops_paying_at_interpolated"]
        c["ci"] = {"stops_paying_at_interpolated": {"lo": 0.8 * x, "hi": 1.2 * x}}
    return s


def assert_image(path: Path) -> np.ndarray:
    """Decodes, has a drawing on it (not one flat colour, a real share of non-white pixels)."""
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100, path
    rgb = img[..., :3]
    assert rgb.std() > 0.02, f"{path} is blank"
    assert (rgb.min(axis=2) < 0.9).mean() > 0.01, f"{path} has almost nothing drawn"
    return img


def svg_ids(path: Path) -> set[str]:
    return set(re.findall(r'id="([^"]+)"', path.read_text()))


# ------------------------------------------------------------------------------------- plots
def test_sweep_writes_every_plot_png_and_svg_and_each_decodes(sweep_report):
    _, paths, out = sweep_report
    assert {(p.stem, p.suffix) for p in paths} == {(s, x) for s in SWEEP_STEMS for x in (".png", ".svg")}
    for p in paths:
        assert p.parent == out and p.stat().st_size > 0
        if p.suffix == ".png":
            assert_image(p)


def test_single_run_draws_no_sweep_plots(run_report):
    _, paths, _ = run_report
    assert {p.stem for p in paths} == RUN_STEMS
    for p in paths:
        if p.suffix == ".png":
            assert_image(p)


def test_no_svg_writes_the_same_pngs_only(sweep_report, tmp_path):
    s, paths, out = sweep_report
    r = pd.read_csv(DATA / "sweep" / "requests.csv")
    png_only = plots.write_plots(s, r, tmp_path, svg=False)
    assert {p.suffix for p in png_only} == {".png"} and not list(tmp_path.glob("*.svg"))
    assert {p.name: p.read_bytes() for p in png_only} == {
        p.name: p.read_bytes() for p in paths if p.suffix == ".png"}


def test_crossover_marked_where_it_exists_and_only_there(sweep_report, tmp_path):
    s, paths, out = sweep_report
    assert s["crossover"][0]["stops_paying_at"] == 64  # the fixture's SD stops paying in the sweep
    for stem in ("sweep_throughput", "sweep_latency", "speedup"):
        assert "crossover-0" in svg_ids(out / f"{stem}.svg"), stem
    assert "unity" in svg_ids(out / "speedup.svg")
    never = copy.deepcopy(s)
    for c in never["crossover"]:
        c["stops_paying_at"] = c["stops_paying_at_interpolated"] = None
    plots.write_plots(never, None, tmp_path)
    assert not any(i.startswith("crossover") for i in svg_ids(tmp_path / "sweep_throughput.svg"))
    assert "crossover-0" not in svg_ids(tmp_path / "speedup.svg")


def test_geometric_sweeps_get_log_axes_linear_ones_do_not():
    assert plots._geometric([1, 4, 16, 64, 256])
    assert plots._geometric([1, 2, 4, 8, 16, 32, 64, 128, 256])
    assert not plots._geometric([2, 4, 6, 8, 10, 12, 14, 16])
    assert not plots._geometric([1, 2])


def test_ci_bands_overloaded_marks_and_missing_keys(tmp_path):
    s, _ = load("sweep")
    fut = future_keys(s)
    paths = plots.write_plots(fut, None, tmp_path)  # no requests table: no CDF, nothing else lost
    ids = svg_ids(tmp_path / "sweep_throughput.svg")
    assert {"ci-band", "overloaded", "crossover-ci-0"} <= ids
    assert "ci-band" in svg_ids(tmp_path / "sweep_latency.svg")  # tpot_s.p99 interval
    assert "ci-band" not in svg_ids(_plain_sweep_svg(s, tmp_path / "plain"))
    assert {p.stem for p in paths} == SWEEP_STEMS - {"latency_cdf"}


def _plain_sweep_svg(s: dict, out: Path) -> Path:
    plots.write_plots(s, None, out)
    return out / "sweep_throughput.svg"


def test_plots_are_byte_reproducible(run_report, tmp_path):
    s, a, first = run_report
    r = pd.read_csv(DATA / "run" / "requests.csv")
    a = a + plan_plots.plan_pareto(DATA / "plan" / "plan.json", first)
    b = plots.write_plots(s, r, tmp_path) + plan_plots.plan_pareto(DATA / "plan" / "plan.json", tmp_path)
    for x, y in zip(a, b, strict=True):
        assert x.read_bytes() == y.read_bytes(), x.name
    assert b"Date" not in a[0].read_bytes() and b"matplotlib" not in a[0].read_bytes()


def test_labels_name_model_gpu_tp_gamma_and_measured_share():
    s, _ = load("run")
    rows = {r["name"]: r for r in s["deployments"]}
    assert plots.design_label(rows["h200-sd"]) == \
        "h200-sd: sd llama-3.1-70b + llama-3.2-1b g4, h200-sxm tp4, derived"
    share = rows["h100-measured"]["latency_stats"]["target"]["measured_share"]
    assert plots.design_label(rows["h100-measured"]).endswith(f"measured {share:.0%}")


def test_plan_pareto_marks_best_and_slo(tmp_path):
    plan = json.loads((DATA / "plan" / "plan.json").read_text())
    paths = plan_plots.plan_pareto(plan, tmp_path)
    assert_image(next(p for p in paths if p.suffix == ".png"))
    assert {"best", "slo"} <= svg_ids(tmp_path / "plan_pareto.svg")
    del plan["slo"]
    plan["best"] = {}
    plan_plots.plan_pareto(plan, tmp_path / "bare")
    assert not {"best", "slo"} & svg_ids(tmp_path / "bare" / "plan_pareto.svg")


# -------------------------------------------------------------------------------------- HTML
class Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.imgs, self.refs, self.text, self.title = [], [], [], [], ""
        self._in_title = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        self._in_title = tag == "title"
        if tag == "img":
            self.imgs.append(a.get("src", ""))
        self.refs += [v for k, v in attrs if k in ("src", "href", "action", "srcset") and v]

    def handle_endtag(self, tag):
        self._in_title = False

    def handle_data(self, data):
        self.text.append(data)
        if self._in_title:
            self.title += data


def parse(text: str) -> Page:
    p = Page()
    p.feed(text)
    p.close()
    return p


def test_html_is_self_contained_and_embeds_every_image(sweep_report):
    s, paths, out = sweep_report
    page_path = html.write_html(out, s, paths)
    text = page_path.read_text()
    page = parse(text)
    assert page.title == "specsim report: fixture-sweep"
    pngs = sorted(p for p in paths if p.suffix == ".png")
    assert len(page.imgs) == len(pngs) == len(SWEEP_STEMS)  # one per plot, PNG preferred to SVG
    embedded = sorted(base64.b64decode(src.split(",", 1)[1]) for src in page.imgs)
    assert all(src.startswith("data:image/png;base64,") for src in page.imgs)
    assert embedded == sorted(p.read_bytes() for p in pngs)
    assert all(r.startswith("data:") for r in page.refs)
    assert "http" not in text and "script" not in page.tags and "link" not in page.tags
    assert "url(" not in text


def test_html_tables_speak_vllm_and_carry_the_numbers(run_report):
    s, paths, out = run_report
    page = parse(html.render_html(s, paths, "t"))
    body = " ".join(page.text)
    for h in ("request throughput (req/s)", "output token throughput (tok/s)",
              "total token throughput (tok/s)", "mean TTFT", "median TTFT", "P99 TTFT", "mean TPOT",
              "P99 TPOT", "median ITL", "P99 ITL", "mean E2E", "P99.9 E2E", "SLO verdict"):
        assert h in body, h
    r = next(r for r in s["deployments"] if r["name"] == "h100-measured")
    assert f"{r['throughput_tokens_per_s']:,.1f}" in body
    assert f"{1e3 * r['tpot_s']['p99']:.2f}" in body
    assert f"{r['latency_stats']['target']['measured_share']:.1%}" in body
    assert r["latency_stats"]["target"]["profile"] in body
    assert "roofline from datasheet" in body and "steps" in body  # provenance, other metrics


def test_html_shows_crossover_future_keys_and_escapes_names(tmp_path):
    s, _ = load("sweep")
    fut = future_keys(s)
    fut["deployments"][0]["name"] = "<script>alert(1)</script>"
    fut["deployments"][2]["name"] = "[/x] & co"
    fut["ranked_note"] = "a <b>top-level</b> section nobody renders yet"
    text = html.render_html(fut, [], "<i>title</i>")
    page = parse(text)
    body = " ".join(page.text)
    assert "script" not in page.tags and "i" not in page.tags
    assert "<script>alert(1)</script>" in body and "[/x] & co" in body and "<i>title</i>" in body
    assert "stops paying at concurrency = 64" in body and "CI " in body
    marked = set(re.findall(r'<tr class=over><td class="t d"><b>([^<]*)</b>', text))
    assert "OVERLOADED" in body and marked == {"sd @concurrency=1"}
    assert "kv capacity tokens" in body and "batch seqs p99" in body and "replications 3" in body
    assert "ranked_note" in body and "MISS" in body  # unknown section shown; SLO verdict from P99s
    parse(html.render_html({"deployments": [{"name": "bare"}]}, [], "bare"))  # nothing else required


# ----------------------------------------------------------------------------------- console
def render(table, width: int = 80) -> list[str]:
    c = Console(width=width, record=True, color_system=None)
    c.print(table)
    return c.export_text().splitlines()


@pytest.mark.parametrize("name", ["sweep", "run"])
def test_compact_table_fits_80_columns_without_truncating_numbers(name):
    s, _ = load(name)
    s = future_keys(s)
    s["deployments"][0]["name"] = "a-rather-long-design-name-for-an-80-column-terminal"
    lines = render(console.compact_table(s))
    assert max(map(len, lines)) <= 80
    text = "\n".join(lines)
    assert "…" not in text
    for r in s["deployments"]:
        assert f"{r['throughput_tokens_per_s']:,.0f}" in text
        assert f"{1e3 * r['tpot_s']['p99']:.1f}" in text
    assert " !" in text and "overloaded" in text  # overloaded marked, legend says so


def test_compact_table_shows_measured_share():
    s, _ = load("run")
    text = "\n".join(render(console.compact_table(s)))
    share = s["deployments"][1]["latency_stats"]["target"]["measured_share"]
    assert f"meas {share:.0%}" in text and "roofline" in text and "derived" in text


@pytest.mark.parametrize("bad", ["[/x]", "[bold]x[/bold]", "[red", "\\[x]"])
def test_markup_in_names_prints_literally(bad):
    s, _ = load("run")
    s["deployments"][0]["name"] = bad
    s["scenario"] = bad
    for t in (console.compact_table(s), console.wide_table(s)):
        text = "\n".join(render(t, 300))
        assert bad in text
    assert bad in "\n".join(render(console.catalogue_table([{"name": bad, "x": 1}], ["name", "x"])))


def test_wide_table_has_everything_at_its_natural_width():
    s = future_keys(load("sweep")[0])
    t = console.wide_table(s)
    lines = render(t, console.natural_width(t))
    text = "\n".join(lines)
    assert "…" not in text
    for h in ("TTFT", "TPOT", "ITL", "E2E", "median ms", "total", "goodput", "batch", "over-"):
        assert h in text, h
    assert "YES" in text and "123,456" in text


def test_catalogue_fits_80_columns():
    rows = [{"name": n, "hbm_gb": 80, "tbps": 3.35, "bf16": 989.0, "fp8": None,
             "interconnect": "Infinity Fabric", "gbs": 900, "price": 2.99, "date": "2026-11"}
            for n in ("h100-sxm", "a100-80gb-sxm", "mi325x")]
    cols = [("name", "name"), ("hbm_gb", "HBM GB"), ("tbps", "TB/s"), ("bf16", "BF16 TFLOP/s"),
            ("fp8", "FP8 TFLOP/s"), ("interconnect", "interconnect"), ("gbs", "GB/s"),
            ("price", "$/GPU-h"), ("date", "price date")]
    lines = render(console.catalogue_table(rows, cols, "GPUs (dense BF16)"))
    text = "\n".join(lines)
    assert max(map(len, lines)) <= 80 and "…" not in text
    assert all(r["name"] in text for r in rows) and "989" in text and "2026-11" in text


# ----------------------------------------------------------------------------------- browser
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PROBE = """<script>
window.addEventListener('load', () => {
  const imgs = [...document.images];
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 0 && i.src.startsWith('data:'));
  document.body.setAttribute('data-probe', imgs.length + '/' + ok.length);
});
</script>"""


def _chromium(tmp_path: Path, *args: str, url: str) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000",
           *args, url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install "
                    "chromium; .ci/run installs it): the headless-browser check of summary.html is skipped")
def test_summary_html_renders_in_a_real_browser(sweep_report, tmp_path):
    s, paths, _ = sweep_report
    page = html.write_html(tmp_path, s, paths)
    probe = tmp_path / "probe.html"  # the report has no scripts; this test copy gets one
    probe.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    dom = _chromium(tmp_path, "--dump-dom", url=probe.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    n = len(SWEEP_STEMS)
    assert "<title>specsim report: fixture-sweep</title>" in dom.stdout
    assert dom.stdout.count('src="data:image/png;base64,') == n
    assert f'data-probe="{n}/{n}"' in dom.stdout, "some embedded image did not decode in Chromium"
    shot = tmp_path / "shot.png"
    res = _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,2000", url=page.as_uri())
    assert res.returncode == 0 and shot.exists(), res.stderr[-2000:]
    img = assert_image(shot)
    assert img.shape[:2] == (2000, 1200)
