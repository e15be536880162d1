"""`make model-analyzer`'s own part, without Model Analyzer: the repository check that keeps its quick
search from stopping at the first candidate, the profile config, and the request data it writes."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
from pathlib import Path

import pytest
from analyzer.profile_ensemble import SERVER_WRAPPER, _write_clips, check_repository, model_analyzer_config

from emotion_build.repository.description import CLASSIFIER_MODEL, ENSEMBLE_MODEL, PREPROCESS_MODEL

REPO_ROOT = Path(__file__).resolve().parents[1]


def without_preferred_sizes(repository: Path, destination: Path) -> Path:
    shutil.copytree(repository, destination, symlinks=True)
    for model in (PREPROCESS_MODEL, CLASSIFIER_MODEL):
        config = destination / model / "config.pbtxt"
        config.write_text(re.sub(r"\n\s*preferred_batch_size:[^\n]*", "", config.read_text()))
    return destination


def with_preferred_size(repository: Path, size: int) -> None:
    config = repository / CLASSIFIER_MODEL / "config.pbtxt"
    config.write_text(
        config.read_text().replace("dynamic_batching {", f"dynamic_batching {{\n  preferred_batch_size: {size}", 1)
    )


def arguments(repository: Path, output: Path) -> argparse.Namespace:
    return argparse.Namespace(
        repository=repository,
        model=ENSEMBLE_MODEL,
        samples=[REPO_ROOT / "samples"],
        output=output,
        max_instances=2,
        max_batch_size=8,
        max_concurrency=8,
        stability=10.0,
        latency_budget_ms=500,
    )


def test_a_preferred_batch_size_is_refused_with_the_reason(tiny_repository: Path, tmp_path: Path) -> None:
    repository = without_preferred_sizes(tiny_repository, tmp_path / "repo")
    check_repository(repository)
    with_preferred_size(repository, 4)
    with pytest.raises(SystemExit, match=r"preferred_batch_size \[4\].*--preferred-batch-size 0"):
        check_repository(repository)


def test_a_missing_model_is_refused_naming_it(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=rf"{PREPROCESS_MODEL}/config.pbtxt is missing"):
        check_repository(tmp_path)


def test_the_profile_config_and_its_request_data(tiny_repository: Path, tmp_path: Path) -> None:
    args = arguments(tiny_repository, tmp_path / "out")
    args.output.mkdir()
    clips = _write_clips(args)
    data = json.loads(clips.read_text())["data"]
    assert len(data) == len(list((REPO_ROOT / "samples").glob("*.wav")))
    assert all(set(entry) == {"audio"} for entry in data)

    config = model_analyzer_config(args, clips, (18000, 18001, 18002))
    assert config["triton_launch_mode"] == "local"
    assert Path(config["triton_server_path"]) == SERVER_WRAPPER and os.access(SERVER_WRAPPER, os.X_OK)
    assert config["triton_grpc_endpoint"] == "localhost:18001"
    assert config["run_config_search_mode"] == "quick"
    assert set(config["cpu_only_composing_models"]) == {PREPROCESS_MODEL, CLASSIFIER_MODEL}
    profile = config["profile_models"][ENSEMBLE_MODEL]
    assert profile["perf_analyzer_flags"]["input-data"] == str(clips)
    assert profile["constraints"] == {"perf_latency_p99": {"max": 500}}
