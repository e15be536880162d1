"""The emotion-client CLI against the real server: output formats, directories, progress, exit codes,
and the console script that `pip install ./client` puts on PATH."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

from emotion_build.server.endpoints import free_port
from emotion_client import EmotionClient
from emotion_client.cli import main

SCRIPT = Path(sys.executable).with_name("emotion-client")


@pytest.fixture(scope="module")
def labels(url: str) -> tuple[str, ...]:
    with EmotionClient(url) as client:
        return client.model_info().labels


@pytest.fixture(scope="module")
def audio_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """root/{a.wav, b.flac, notes.txt, sub/c.wav, sub/deeper/d.ogg, empty/}"""
    root = tmp_path_factory.mktemp("audio-tree")
    rng = np.random.default_rng(0)

    def clip(path: Path, rate: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(path, 0.1 * rng.standard_normal(rate), rate)

    clip(root / "a.wav", 16000)
    clip(root / "b.flac", 22050)
    clip(root / "sub" / "c.wav", 8000)
    clip(root / "sub" / "deeper" / "d.ogg", 48000)
    (root / "notes.txt").write_text("not audio, and not picked up from a directory")
    (root / "empty").mkdir()
    return root


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_default_table_with_a_failed_file(
    url: str, audio_tree: Path, capsys: pytest.CaptureFixture[str], labels: tuple[str, ...]
) -> None:
    missing = audio_tree / "missing.wav"
    code, out, err = run(["classify", str(audio_tree / "a.wav"), str(missing), "--url", url], capsys)
    assert code == 1  # a file failed
    header, good, bad = out.splitlines()
    assert header.split() == ["FILE", "LABEL", "SCORE", "ALL", "SCORES"]
    assert good.startswith(str(audio_tree / "a.wav")) and good.split()[1] in labels
    assert len(good.split()) == 3 + 2 * len(labels)  # every class with its score
    assert bad.split()[1] == "ERROR" and "InvalidAudioError: audio file not found" in bad
    assert header.index("LABEL") == good.index(good.split()[1]) == bad.index("ERROR")  # aligned columns
    assert "1 of 2 files classified, 1 failed" in err


def test_recursive_json_lines(url: str, audio_tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["classify", str(audio_tree), "--recursive", "--json", "--top-k", "2", "--url", url], capsys)
    assert code == 0
    records = [json.loads(line) for line in out.splitlines()]
    assert [Path(r["path"]).relative_to(audio_tree).as_posix() for r in records] == [
        "a.wav",
        "b.flac",
        "sub/c.wav",
        "sub/deeper/d.ogg",
    ]
    for record in records:
        assert len(record["scores"]) == 2
        assert record["label"] == record["scores"][0]["label"] and record["score"] == record["scores"][0]["score"]
        assert record["untrained"] is False
    assert "4 of 4 files classified" in err


def test_csv_has_one_column_per_label(
    url: str, audio_tree: Path, capsys: pytest.CaptureFixture[str], labels: tuple[str, ...]
) -> None:
    paths = [str(audio_tree / "a.wav"), str(audio_tree / "notes.txt")]  # a named file is read whatever its name
    code, out, _ = run(["classify", *paths, "--csv", "--url", url], capsys)
    assert code == 1
    rows = list(csv.DictReader(io.StringIO(out)))
    assert list(rows[0]) == ["path", "label", "score", *labels, "error"]
    good, bad = rows
    assert sum(float(good[label]) for label in labels) == pytest.approx(1.0, abs=1e-4)
    assert float(good[good["label"]]) == float(good["score"]) == max(float(good[label]) for label in labels)
    assert good["error"] == "" and bad["label"] == ""
    assert bad["error"].startswith("InvalidAudioError: cannot read audio file")


def test_a_directory_needs_recursive_and_some_files(
    url: str, audio_tree: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["classify", str(audio_tree), "--url", url])
    assert exited.value.code == 2
    assert "pass --recursive" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main(["classify", str(audio_tree / "empty"), "-r", "--url", url])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "no audio files under" in err  # as perf-data says it: one collector (emotion_client.audio)


def test_progress_bar_goes_to_stderr(url: str, audio_tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["classify", str(audio_tree), "-r", "--json", "--progress", "-j", "2", "--url", url], capsys)
    assert code == 0
    assert "classify 4/4 [" in err and "100%" in err
    assert all(json.loads(line) for line in out.splitlines())  # stdout stays machine-readable
    code, _, err = run(["classify", str(audio_tree), "-r", "--no-progress", "--url", url], capsys)
    assert code == 0 and "classify 4/4" not in err


def test_timeout_and_unreachable_server_exit_nonzero(
    url: str, audio_tree: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clip = str(audio_tree / "a.wav")
    code, out, err = run(["classify", clip, "--url", url, "--timeout", "0.0001"], capsys)
    assert code == 1 and "timed out" in out + err  # the model-config fetch or the file's request
    dead = f"127.0.0.1:{free_port()}"
    code, _, err = run(["classify", clip, "--url", dead, "--retries", "0"], capsys)
    assert code == 1 and f"Triton server at {dead} is unavailable" in err


def test_health_and_labels(url: str, capsys: pytest.CaptureFixture[str], labels: tuple[str, ...]) -> None:
    code, out, _ = run(["health", "--url", url], capsys)
    assert code == 0
    assert out.splitlines()[1].split()[:3] == [url, "yes", "yes"]
    dead = f"127.0.0.1:{free_port()}"
    code, out, _ = run(["health", "--url", f"{url},{dead}", "--json"], capsys)
    assert code == 1
    assert [(e["url"], e["ready"]) for e in json.loads(out)] == [(url, True), (dead, False)]
    code, out, _ = run(["labels", "--url", url], capsys)
    assert code == 0 and tuple(out.split()) == labels
    code, out, _ = run(["labels", "--url", url, "--json"], capsys)
    settings = json.loads(out)
    assert settings["labels"] == list(labels) and settings["sample_rate"] == 16000


def test_bad_arguments_are_usage_errors(url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (
        ["classify", "x.wav", "--json", "--csv"],
        ["classify", "x.wav", "--url", "grpc://host:8001"],
        ["classify", "x.wav", "--root-certs", str(tmp_path / "missing.pem")],
        ["health", "--timeout", "-1"],
        ["classify", "x.wav", "--url", url, "--top-k", "0"],
        ["classify", "x.wav", "--url", url, "--concurrency", "0"],
        ["frobnicate"],
    ):
        with pytest.raises(SystemExit) as exited:
            main(argv)
        assert exited.value.code == 2, argv
    capsys.readouterr()


def test_installed_console_script(url: str, audio_tree: Path) -> None:
    env = {**os.environ, "EMOTION_CLIENT_URL": url}  # the default --url
    version = subprocess.run([str(SCRIPT), "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.startswith("emotion-client ")
    done = subprocess.run(
        [str(SCRIPT), "classify", str(audio_tree), "--recursive", "--json"], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 4
    module = subprocess.run(
        [sys.executable, "-m", "emotion_client", "labels"], capture_output=True, text=True, env=env, check=True
    )
    assert len(module.stdout.split()) == 4
