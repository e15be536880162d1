"""The throughput bench's report from a saved run, byte for byte.

tests/data/throughput_run.json is a `--quick --random-init tiny --workloads 1s mixed` run's --json
file (its command is in its context), its numbers rounded to four decimals, and one note and two
peers (one within the gate, one not, with made-up points) added by hand so that every table and
list is rendered. throughput_run.md is what `throughput.py --render`
made of it, and throughput_tune.md what `tune_markdown` made of two candidates built from its
served points: a change to the measuring code must not move a byte of the tables (the split into
benchmarks/speed/ moved none); a change to the tables on purpose renders them again.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from speed.results import Point, Run, TuneResult
from speed.tune_report import tune_markdown
from speed.tuning import TUNE_CANDIDATES
from throughput import main

DATA = Path(__file__).parent / "data"
RUN = DATA / "throughput_run.json"


def test_a_saved_run_renders_the_tables_it_was_saved_with(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "benchmarks.md"
    assert main(["--render", str(RUN), "--output", str(output)]) == 0
    assert output.read_bytes() == (DATA / "throughput_run.md").read_bytes()
    printed = capsys.readouterr().out
    assert f"<!-- throughput:begin -->\n{printed}<!-- throughput:end -->" in output.read_text()


def test_a_saved_run_reads_back_and_saves_the_same_bytes() -> None:
    text = RUN.read_text()
    run = Run.from_json(text)
    assert run.to_json() == text
    assert [w.name for w in run.workloads] == ["1 s", "mixed"]
    systems = {
        "hf",
        "hf_batch",
        "hf_bf16",
        "torchscript",
        "torchscript_1t",
        "served",
        "sdk",
        "peer_ov",
        "peer_ort_int8",
    }
    assert {p.system for p in run.points} == systems
    assert set(run.rounds) == {"1 s", "mixed"} and all(len(r.measured) == 6 for r in run.rounds.values())
    assert all(len(r.hf) == len(r.hf_batch) == len(r.served) for r in run.rounds.values())
    assert {pair.against for pair in run.c1_pairs} == {"hf", "in-process"}
    assert run.arithmetic is not None and set(run.arithmetic.gflop_per_audio_s) == {"1 s", "mixed"}
    assert [(peer.system, peer.passes) for peer in run.peers] == [("peer_ov", True), ("peer_ort_int8", False)]


def test_the_tuning_table_of_two_candidates() -> None:
    saved = json.loads(RUN.read_text())
    served = [Point(**p) for p in saved["points"] if p["system"] == "served"]
    first = [(label, ms) for label, ms in saved["first_requests"][1:]]
    failure = "perf_analyzer on mixed at c=4 failed: exit status 99"
    results = [
        TuneResult(TUNE_CANDIDATES[0], served, first, []),
        TuneResult(TUNE_CANDIDATES[1], [p for p in served if p.setting == 1], first[::-1], [failure]),
    ]
    context = {key: saved["context"][key] for key in ("date", "machine", "model")}
    names = [workload["name"] for workload in saved["workloads"]]
    assert tune_markdown(results, names, **context) + "\n" == (DATA / "throughput_tune.md").read_text()
