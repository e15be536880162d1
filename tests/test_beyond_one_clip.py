"""Long recordings, accuracy evaluation and embeddings, through the real server."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import soundfile
import torch
from precision_bands import bands_of
from speech import espeak_clip
from triton_probes import infer

from emotion_build.server.launcher import TritonServer
from emotion_client import AsyncEmotionClient, EmotionClient
from emotion_client.audio import load_audio

RATE = 16000


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About 47 s of espeak sentences separated by silences, at espeak's 22.05 kHz."""
    directory = tmp_path_factory.mktemp("recording")
    parts = []
    for index, seconds in enumerate((6.0, 4.5, 9.0, 3.0, 7.5)):
        audio, rate = soundfile.read(espeak_clip(directory, seconds, index=index), dtype="float32")
        parts += [audio, np.zeros(int(rate * (1.0 + index)), np.float32)]
    path = directory / "meeting.wav"
    soundfile.write(path, np.concatenate(parts), rate, subtype="PCM_16")
    return path


def test_timeline_windows_answer_like_single_clips(
    served_client: EmotionClient, served: TritonServer, recording: Path
) -> None:
    """On each runtime in fp32 and on the default export, whose windows, batched, may move within its gate's band."""
    band = bands_of(served.model_repository).batched
    timeline = served_client.classify_timeline(recording, window_s=4.0, hop_s=2.0)
    audio = load_audio(recording, sample_rate=None, target_rate=RATE)
    assert timeline.duration_s == pytest.approx(audio.size / RATE)
    assert timeline.segments[0].start_s == 0 and timeline.segments[-1].end_s == pytest.approx(timeline.duration_s)
    starts = [segment.start_s for segment in timeline.segments]
    assert max(np.diff(starts)) <= 2.0 + 1e-9
    assert len(timeline.track) == int(np.ceil(timeline.duration_s))
    labels = timeline.labels
    for segment in timeline.segments[::5]:
        clip = audio[round(segment.start_s * RATE) : round(segment.end_s * RATE)]
        expected = infer(served.endpoints.grpc_url, clip[None, :])
        np.testing.assert_allclose([s.score for s in segment.scores], expected, atol=band)
        best, second = np.sort(expected)[::-1][:2]
        if best - second > 2 * band:
            assert segment.label == labels[int(np.argmax(expected))]
    for point in timeline.track:
        assert sum(s.score for s in point.scores) == pytest.approx(1.0, abs=1e-6)


def test_async_timeline_equals_sync(client: EmotionClient, triton: TritonServer, recording: Path) -> None:
    sync = client.classify_timeline(recording, window_s=3.0, hop_s=1.5)

    async def run() -> object:
        async with AsyncEmotionClient(triton.endpoints.grpc_url) as sdk:
            return await sdk.classify_timeline(recording, window_s=3.0, hop_s=1.5)

    asynchronous = asyncio.run(run())
    assert [(s.start_s, s.end_s, s.label) for s in sync.segments] == [
        (s.start_s, s.end_s, s.label)
        for s in asynchronous.segments  # type: ignore[attr-defined]
    ]


def _peak_timeline_memory(client: EmotionClient, path: Path) -> tuple[int, int]:
    tracemalloc.start()
    try:
        timeline = client.classify_timeline(path, window_s=4.0, hop_s=4.0, concurrency=8)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak, len(timeline.segments)


def _noise_file(path: Path, minutes: int) -> Path:
    rng = np.random.default_rng(minutes)
    with soundfile.SoundFile(path, "w", samplerate=RATE, channels=1, subtype="PCM_16") as handle:
        for _ in range(6 * minutes):
            handle.write((0.1 * rng.standard_normal(10 * RATE)).astype(np.float32))
    return path


def test_timeline_memory_does_not_grow_with_the_recording(client: EmotionClient, tmp_path: Path) -> None:
    """Three times the audio must not need more memory: only the windows in flight are held."""
    short_peak, short_windows = _peak_timeline_memory(client, _noise_file(tmp_path / "5min.wav", 5))
    long_peak, long_windows = _peak_timeline_memory(client, _noise_file(tmp_path / "15min.wav", 15))
    decoded = 15 * 60 * RATE * 4
    print(
        f"timeline client peak traced memory: 5 min {short_peak / 1e6:.1f} MB, 15 min {long_peak / 1e6:.1f} MB "
        f"(15 min decoded whole: {decoded / 1e6:.0f} MB)"
    )
    assert (short_windows, long_windows) == (75, 225)
    assert long_peak < 1.25 * short_peak + 1_000_000
    assert long_peak < decoded / 4


def test_timeline_cli_writes_json_csv_and_plot(triton: TritonServer, recording: Path, tmp_path: Path) -> None:
    base = [sys.executable, "-m", "emotion_client", "timeline", str(recording), "--url", triton.endpoints.grpc_url]
    as_json = subprocess.run([*base, "--json", "--plot", str(tmp_path / "t.png")], capture_output=True, text=True)
    assert as_json.returncode == 0, as_json.stderr
    data = json.loads(as_json.stdout)
    assert data["labels"] == ["neu", "hap", "ang", "sad"] and len(data["track"]) == int(np.ceil(data["duration_s"]))
    assert (tmp_path / "t.png").read_bytes()[:4] == b"\x89PNG"
    as_csv = subprocess.run([*base, "--csv"], capture_output=True, text=True)
    lines = as_csv.stdout.splitlines()
    assert lines[0] == "start_s,end_s,label,neu,hap,ang,sad" and len(lines) == len(data["track"]) + 1
    table = subprocess.run(base, capture_output=True, text=True)
    assert "per-second share of top label" in table.stdout and "audio-s/s" in table.stderr


def _labelled_set(directory: Path, labels: tuple[str, ...], count: int) -> list[tuple[Path, str]]:
    clips = []
    for index in range(count):
        source = espeak_clip(directory, 1.0 + 0.4 * index, index=index)
        audio, rate = soundfile.read(source, dtype="float32")
        path = directory / f"clip{index}.wav"
        soundfile.write(path, load_audio(audio, sample_rate=rate, target_rate=RATE), RATE, subtype="FLOAT")
        clips.append((path, labels[(index * 3) % len(labels)]))
    return clips


def test_evaluate_matches_metrics_computed_here(triton: TritonServer, tmp_path: Path) -> None:
    labels = ("neu", "hap", "ang", "sad")
    clips = _labelled_set(tmp_path, labels, 10)
    (tmp_path / "set.csv").write_text("path,label\n" + "".join(f"{p.name},{label}\n" for p, label in clips))
    predicted = [
        labels[int(np.argmax(infer(triton.endpoints.grpc_url, soundfile.read(p, dtype="float32")[0][None, :])))]
        for p, _ in clips
    ]
    truth = [label for _, label in clips]
    accuracy = sum(p == t for p, t in zip(predicted, truth, strict=True)) / len(truth)
    recalls = []
    for label in labels:
        members = [p for p, t in zip(predicted, truth, strict=True) if t == label]
        if members:
            recalls.append(sum(p == label for p in members) / len(members))
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "emotion_client",
            "evaluate",
            "--manifest",
            str(tmp_path / "set.csv"),
            "--url",
            triton.endpoints.grpc_url,
            "--report",
            str(tmp_path / "r.json"),
            "--confusion-png",
            str(tmp_path / "c.png"),
        ],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    print(
        f"evaluate: accuracy {report['accuracy']:.3f} (expected {accuracy:.3f}), UAR {report['unweighted_recall']:.3f}"
    )
    assert report["total"] == 10
    assert report["accuracy"] == pytest.approx(accuracy)
    assert report["unweighted_recall"] == pytest.approx(sum(recalls) / len(recalls))
    assert sum(map(sum, report["confusion"])) == 10
    assert "accuracy" in run.stdout and (tmp_path / "c.png").stat().st_size > 0


def test_evaluate_reads_an_iemocap_fold(triton: TritonServer, tmp_path: Path) -> None:
    dialog = "Ses01F_impro01"
    wav_dir = tmp_path / "Session1" / "sentences" / "wav" / dialog
    wav_dir.mkdir(parents=True)
    source = espeak_clip(tmp_path, 1.5, index=1)
    lines = []
    for index, emotion in enumerate(("neu", "exc", "fru", "ang", "sad", "xxx")):
        name = f"{dialog}_F00{index}"
        (wav_dir / f"{name}.wav").write_bytes(source.read_bytes())
        lines.append(f"[{index}.0000 - {index + 1}.0000]\t{name}\t{emotion}\t[2.5000, 2.5000, 2.5000]\n")
    label_dir = tmp_path / "Session1" / "dialog" / "EmoEvaluation"
    label_dir.mkdir(parents=True)
    (label_dir / f"{dialog}.txt").write_text("".join(lines))
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "emotion_client",
            "evaluate",
            "--iemocap",
            str(tmp_path),
            "--fold",
            "1",
            "--url",
            triton.endpoints.grpc_url,
            "--report",
            str(tmp_path / "r.json"),
        ],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["total"] == 4  # neu, exc->hap, ang, sad; fru and xxx are outside the 4-class protocol
    assert [m["support"] for m in report["per_class"]] == [1, 1, 1, 1]


def test_embeddings_are_the_classifier_input_and_do_not_depend_on_neighbours(
    client: EmotionClient,
    triton: TritonServer,
    hf_classifier: tuple[Any, Any],
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(5)
    clips = [(0.2 * rng.standard_normal(int(RATE * s))).astype(np.float32) for s in (0.4, 1.3, 2.2, 5.0, 9.7, 14.1)]
    alone = [client.embed(clip) for clip in clips]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(client.embed, clips * 3))
    drift = max(float(np.abs(t - alone[i % len(clips)]).max()) for i, t in enumerate(together))
    print(f"embedding: max |Δ| alone vs batched with neighbours {drift:.2e}")
    assert drift <= 1e-5
    model, extractor = hf_classifier
    assert alone[0].shape == (model.config.classifier_proj_size,)
    with torch.no_grad():
        for clip, embedding in zip(clips, alone, strict=True):
            eager = model(extractor(clip, sampling_rate=RATE, return_tensors="pt").input_values).logits[0]
            served = model.classifier(torch.from_numpy(embedding))
            assert float((served - eager).abs().max()) <= 1e-4

    async def embed_async() -> npt.NDArray[np.float32]:
        async with AsyncEmotionClient(triton.endpoints.grpc_url) as sdk:
            return await sdk.embed(clips[3])

    np.testing.assert_allclose(asyncio.run(embed_async()), alone[3], atol=1e-6)
