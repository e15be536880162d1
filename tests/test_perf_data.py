"""`emotion-client perf-data`: perf_analyzer's input data is the SDK's audio, byte for byte, and a real
perf_analyzer run on it succeeds on every request the server counts."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import soundfile
import tritonclient.grpc as grpcclient

from emotion_build.server.launcher import TritonServer
from emotion_build.server.perf_analyzer import perf_analyzer_command, perf_analyzer_env
from emotion_client import InvalidAudioError, ModelInfo
from emotion_client.audio import collect_audio_files
from emotion_client.cli import main
from emotion_client.codec import prepare_audio
from emotion_client.perf_data import load_perf_clips, perf_input_data

REPO_ROOT = Path(__file__).resolve().parents[1]
INFO = ModelInfo(
    model_name="emotion",
    labels=("neu", "hap"),
    sample_rate=16000,
    audio_input="speech_in",  # not the default name: the data must take the server's
    probabilities_output="probabilities",
    logits_output="logits",
    min_duration_s=0.1,
    max_duration_s=4.0,
    untrained=True,
)


def write_wav(path: Path, seconds: float, rate: int, channels: int, subtype: str = "PCM_16") -> Path:
    rng = np.random.default_rng(len(path.name))
    frames = round(seconds * rate)
    tone = np.sin(2 * np.pi * 220 * np.arange(frames) / rate)
    audio = np.stack([0.3 * tone + 0.05 * (c + 1) * rng.standard_normal(frames) for c in range(channels)], axis=1)
    soundfile.write(path, audio, rate, subtype=subtype)
    return path


def decoded(entry: dict[str, dict[str, object]], name: str) -> npt.NDArray[np.float32]:
    tensor = entry[name]
    samples = np.frombuffer(base64.b64decode(str(tensor["b64"])), dtype="<f4")
    assert tensor["shape"] == [samples.size]
    return samples


def test_each_request_is_the_clip_the_sdk_would_send(tmp_path: Path) -> None:
    """Stereo 22.05 kHz float and mono 8 kHz 16-bit: resampled and downmixed by the SDK's own code."""
    stereo = write_wav(tmp_path / "a_stereo.wav", 1.3, 22050, 2, "FLOAT")
    mono = write_wav(tmp_path / "b_mono.flac", 0.7, 8000, 1)
    (tmp_path / "notes.txt").write_text("not audio: skipped by its ending")
    files = collect_audio_files([tmp_path])
    assert files == [stereo, mono]
    data = perf_input_data([clip.samples for clip in load_perf_clips(files, INFO)], INFO.audio_input)
    assert len(data["data"]) == 2
    for entry, path in zip(data["data"], files, strict=True):
        assert list(entry) == ["speech_in"]
        np.testing.assert_array_equal(decoded(entry, "speech_in"), prepare_audio(path, None, INFO))
    first = decoded(data["data"][0], "speech_in")
    assert first.size == round(1.3 * 16000)
    left_only = prepare_audio(soundfile.read(stereo, dtype="float32")[0][:, 0], 22050, INFO)
    assert not np.allclose(first, left_only, atol=1e-3), "both channels are mixed, not the first taken"


def test_lengths_cycle_within_each_file_and_skip_what_a_file_cannot_fill(tmp_path: Path) -> None:
    long = write_wav(tmp_path / "long.wav", 3.0, 16000, 1)
    short = write_wav(tmp_path / "short.wav", 1.5, 44100, 2)
    clips = load_perf_clips([long, short], INFO, [1.0, 2.0])
    assert [(clip.source.name, clip.samples.size) for clip in clips] == [
        ("long.wav", 16000),
        ("long.wav", 32000),
        ("short.wav", 16000),
    ]
    np.testing.assert_array_equal(clips[1].samples, prepare_audio(long, None, INFO)[:32000])
    np.testing.assert_array_equal(clips[2].samples, prepare_audio(short, None, INFO)[:16000])
    assert clips[2].duration_s == 1.0


def test_a_file_over_the_servers_limit_is_named_with_the_way_out(tmp_path: Path) -> None:
    too_long = write_wav(tmp_path / "speech.wav", 4.5, 16000, 1)
    with pytest.raises(InvalidAudioError, match=r"'.*speech\.wav'.*maximum of 4 s.*--lengths-s"):
        load_perf_clips([too_long], INFO)
    assert [c.samples.size for c in load_perf_clips([too_long], INFO, [4.0])] == [64000]


def test_refusals_name_the_problem(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no audio files under"):
        collect_audio_files([tmp_path / "empty"])
    missing = tmp_path / "missing.wav"  # kept, as classify keeps it: reading it names it
    assert collect_audio_files([missing]) == [missing]
    with pytest.raises(InvalidAudioError, match=r"not found: '.*missing\.wav'"):
        load_perf_clips([missing], INFO)
    with pytest.raises(ValueError, match="pass --recursive"):
        collect_audio_files([tmp_path / "empty"], folders=False)
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF not really a wav file")
    with pytest.raises(InvalidAudioError, match=r"cannot read audio file '.*broken\.wav'"):
        load_perf_clips([broken], INFO)
    clip = write_wav(tmp_path / "clip.wav", 1.0, 16000, 1)
    with pytest.raises(ValueError, match=r"length 5 s is outside the limits of model 'emotion', 0\.1 s to 4 s"):
        load_perf_clips([clip], INFO, [1.0, 5.0])
    with pytest.raises(InvalidAudioError, match="every file is shorter than 2 s"):
        load_perf_clips([clip], INFO, [2.0, 3.0])


def test_an_empty_folder_is_a_usage_error_before_any_server_is_asked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as exit_:
        main(["perf-data", str(tmp_path / "empty"), "-o", str(tmp_path / "x.json"), "--url", "127.0.0.1:9"])
    assert exit_.value.code == 2
    assert "no audio files under" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def success_and_failures(url: str) -> tuple[int, int]:
    with grpcclient.InferenceServerClient(url) as triton:
        stats = triton.get_inference_statistics("emotion", as_json=True)["model_stats"][0]["inference_stats"]
    return int(stats["success"].get("count", 0)), int(stats["fail"].get("count", 0))


def test_perf_analyzer_runs_the_data_and_the_server_counts_every_request(triton: TritonServer, tmp_path: Path) -> None:
    """The README's two lines: `emotion-client perf-data` writes the data, perf_analyzer sends it."""
    url = triton.endpoints.grpc_url
    clips = tmp_path / "clips.json"
    made = subprocess.run(
        [
            sys.executable,
            "-m",
            "emotion_client",
            "perf-data",
            str(REPO_ROOT / "samples"),
            "-o",
            str(clips),
            "--url",
            url,
            "--lengths-s",
            "1",
            "1.5",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert made.returncode == 0, made.stderr
    assert re.search(r"wrote 8 clips from 4 files", made.stdout), made.stdout
    assert [entry["audio"]["shape"] for entry in json.loads(clips.read_text())["data"]] == [[16000], [24000]] * 4
    requests = 24
    before = success_and_failures(url)
    command = perf_analyzer_command(
        url, input_data=clips, concurrency=(2,), extra_args=["--request-count", str(requests)]
    )
    result = subprocess.run(command, env=perf_analyzer_env(), capture_output=True, text=True, timeout=180)
    after = success_and_failures(url)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    assert re.search(rf"Client:\s+Request count: {requests}\b", result.stdout), result.stdout[-2000:]
    assert (after[0] - before[0], after[1] - before[1]) == (requests, 0)
