"""What a run must tell its reader besides the figures (issue 15, item 3): a length trace cycled
under `repeat: true` says how many times (trace_cycles = requests / rows, in summary.json,
summary.md, summary.html and on the console), and a draft whose vocabulary differs from the
target's is a warning on `specsim run`'s console and in the report, as `specsim check` gives it.
The CLI runs in-process (typer's CliRunner)."""
from __future__ import annotations

import json
from pathlib import Path

import yaml
from typer.testing import CliRunner

from simulator.cli import app

from conftest import AR_8B, SD_8B, scenario_dict

QWEN_SD = {**SD_8B, "name": "sd-qwen", "draft": "qwen2.5-0.5b"}


def cli(*args):
    res = CliRunner().invoke(app, [str(a) for a in args])
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert res.exit_code == 0, res.output
    return res


def _scenario(tmp_path: Path, d: dict) -> Path:
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(d, sort_keys=False))
    return p


def _trace_scenario(tmp_path: Path, requests: int, **extra) -> Path:
    """Output lengths from a 10-row trace, cycled (`repeat: true`) when requests > 10."""
    trace = tmp_path / "lengths.csv"
    trace.write_text("out\n" + "".join(f"{4 + i}\n" for i in range(10)))
    d = scenario_dict([AR_8B], requests=requests, prompt={"dist": "fixed", "value": 64},
                      output={"dist": "trace", "path": str(trace), "column": "out", "repeat": True}, **extra)
    return _scenario(tmp_path, d)


def _report(tmp_path: Path, path: Path, *opts):
    out = tmp_path / "out"
    res = cli("run", path, "--out", out, "--no-svg", *opts)
    return res, json.loads((out / "summary.json").read_text()), (out / "summary.md").read_text(), \
        (out / "summary.html").read_text()


def test_cycled_trace_says_how_many_times(tmp_path):
    """25 requests from 10 rows: 2.5 cycles, everywhere the report is read. Catches the count
    going unreported (the issue's 40,000 requests from 19,366 rows), rows/requests inverted (0.4)
    or an integer division (2)."""
    path = _trace_scenario(tmp_path, 25)
    res, s, md, html = _report(tmp_path, path)
    assert s["trace_cycles"] == [{"field": "workload.output_tokens", "path": str(tmp_path / "lengths.csv"),
                                  "column": "out", "rows": 10, "requests": 25, "cycles": 2.5}]
    sentence = "workload.output_tokens: 25 requests from the 10 rows of"
    for text in (res.output, md, html):
        assert sentence in text and "the rows cycle 2.5 times (repeat: true)" in text
    assert "note:" in res.output
    check = cli("check", path)
    assert "the rows cycle 2.5 times" in check.output
    rerendered = cli("report", tmp_path / "out", "--no-svg")  # from summary.json alone
    assert "the rows cycle 2.5 times" in rerendered.output


def test_no_cycle_line_when_the_trace_covers_the_requests(tmp_path):
    """10 requests from 10 rows use each row once: nothing to report (n == rows is not a cycle)."""
    res, s, md, html = _report(tmp_path, _trace_scenario(tmp_path, 10))
    assert "trace_cycles" not in s
    for text in (res.output, md, html):
        assert "rows cycle" not in text and "note:" not in text


def test_sweep_over_the_request_count_reports_each_cycled_count(tmp_path):
    """Each sweep point draws its own count: 5 (no cycle) and 25 (2.5 cycles); only the second
    is reported. Catches reading the base scenario's count instead of each point's."""
    grid = {"grid": {"workload.requests": [5, 25]}}
    _, s, md, _ = _report(tmp_path, _trace_scenario(tmp_path, 8, sweep=grid))
    assert [(c["requests"], c["cycles"]) for c in s["trace_cycles"]] == [(25, 2.5)]
    assert md.count("the rows cycle") == 1


def test_run_warns_about_a_draft_with_another_vocabulary(tmp_path):
    """A Qwen draft for a Llama target: `run` prints what `check` prints, once per deployment,
    and the report carries it. Catches the warning reaching only `check` (before: silent run)."""
    path = _scenario(tmp_path, scenario_dict([AR_8B, QWEN_SD], requests=20))
    res, s, md, html = _report(tmp_path, path)
    words = "deployments[1].draft: qwen2.5-0.5b has a vocabulary of 151,936 tokens and llama-3.1-8b 128,256"
    assert f"warning: {path}: {words}" in " ".join(res.output.split())
    assert " ".join(cli("check", path).output.split()).count(words) == 1
    assert res.output.count("has a vocabulary of") == 1
    assert f"- **warning**: {words}" in md
    assert "warning: " + words in html
    warned = [(r["name"], w) for r in s["deployments"] for w in r["config"].get("warnings", [])]
    assert len(warned) == 1 and warned[0][0] == "sd-qwen" and words in warned[0][1]


def test_run_json_keeps_stdout_parseable_with_a_warning(tmp_path):
    """The warning goes to stderr: `--json` output stays one JSON document."""
    path = _scenario(tmp_path, scenario_dict([QWEN_SD], requests=10))
    res = cli("run", path, "--out", tmp_path / "out", "--no-svg", "--json")
    assert json.loads(res.stdout)["deployments"][0]["config"]["warnings"]
    assert "has a vocabulary of" in res.stderr


def test_matching_vocabulary_gives_no_warning(tmp_path):
    """A Llama-3.2-1B draft for Llama-3.1-8B shares the tokenizer: no warning anywhere."""
    res, s, md, _ = _report(tmp_path, _scenario(tmp_path, scenario_dict([AR_8B, SD_8B], requests=10)))
    assert "warning" not in res.output and "warning" not in md
    assert not any(r["config"].get("warnings") for r in s["deployments"])
