"""A long-lived client never labels an answer with another model version's labels.

The model is replaced under traffic as an operator would (export again, then Triton's explicit
model control loads it) by checkpoints that give every clip the same label under a different class
order: v2 permutes v1's head and labels together, v3 adds a fifth class that never wins. A client
that kept v1's labels would name v2's answers wrongly; the SDK labels each answer from the response
(the classification extension on the logits) and reads the model again when they change.
"""

from __future__ import annotations

import collections
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
import tritonclient.grpc as grpcclient
from repositories import export_cpu_repository
from transformers import AutoModelForAudioClassification, Wav2Vec2FeatureExtractor

from emotion_build.server.launcher import TritonServer
from emotion_client import EmotionClient, EmotionClientError

RATE = 16000
PERMUTATION = [2, 0, 3, 1]
"""v2's class i is v1's class PERMUTATION[i]: every class moves, so v1's labels misname every v2 answer."""


def tones() -> list[npt.NDArray[np.float32]]:
    """Clips the tiny random model answers differently (noise alone gets one label from it)."""
    rng = np.random.default_rng(0)
    t = np.arange(int(1.5 * RATE)) / RATE
    pairs = [(90, 1), (220, 3), (440, 0.5), (1000, 7), (2500, 2), (5000, 11), (150, 20), (3300, 5)]
    return [
        (
            np.sin(2 * np.pi * f * t) * (1 + 0.5 * np.sin(2 * np.pi * am * t)) + 0.05 * rng.standard_normal(t.size)
        ).astype(np.float32)
        for f, am in pairs
    ]


def relabelled(source: Path, output: Path, *, extra_class: bool = False) -> Path:
    """`source` with its head's classes in PERMUTATION's order (labels moved with them), plus a fifth
    class whose bias keeps it from ever winning."""
    model = AutoModelForAudioClassification.from_pretrained(source)
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    weight, bias = model.classifier.weight.detach()[PERMUTATION], model.classifier.bias.detach()[PERMUTATION]
    labels = [labels[i] for i in PERMUTATION]
    if extra_class:
        weight = torch.cat([weight, torch.zeros(1, weight.shape[1])])
        bias = torch.cat([bias, torch.tensor([-100.0])])
        labels.append("calm")
    head = torch.nn.Linear(weight.shape[1], len(labels))
    with torch.no_grad():
        head.weight.copy_(weight)
        head.bias.copy_(bias)
    model.classifier = head
    model.config.num_labels = len(labels)
    model.config.id2label = dict(enumerate(labels))
    model.config.label2id = {label: i for i, label in enumerate(labels)}
    model.save_pretrained(output)
    Wav2Vec2FeatureExtractor.from_pretrained(source).save_pretrained(output)
    return output


def export(model_dir: Path, repository: Path, *options: str) -> None:
    export_cpu_repository(model_dir, repository, "--classifier-instances", "1", *options)


class Callers:
    """Two threads sharing one long-lived client, each classifying the clips in turn until stopped,
    counting every outcome: right, a wrong label, a typed SDK error, or an untyped failure."""

    def __init__(self, client: EmotionClient, clips: list[npt.NDArray[np.float32]], expected: list[str]) -> None:
        self.client, self.clips, self.expected = client, clips, expected
        self.outcomes: collections.Counter[str] = collections.Counter()
        self.classes: collections.Counter[int] = collections.Counter()
        self._done = threading.Event()
        self._threads = [threading.Thread(target=self._keep_calling) for _ in range(2)]

    def __enter__(self) -> Callers:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._done.set()
        for thread in self._threads:
            thread.join()

    def _keep_calling(self) -> None:
        count = 0
        while not self._done.is_set():
            index = count % len(self.clips)
            count += 1
            try:
                result = self.client.classify(self.clips[index], RATE)
            except EmotionClientError as error:
                self.outcomes[f"{type(error).__name__}: {error.message[:100]}"] += 1
                continue
            except Exception as error:  # an untyped failure: the test fails on it
                self.outcomes[f"untyped {error!r}"] += 1
                continue
            self.outcomes["right" if result.label == self.expected[index] else f"wrong label {result.label}"] += 1
            self.classes[len(result.scores)] += 1


def test_every_answer_carries_the_label_the_serving_version_means(tiny_model_dir: Path, tmp_path: Path) -> None:
    v2 = relabelled(tiny_model_dir, tmp_path / "v2")
    v3 = relabelled(v2, tmp_path / "v3", extra_class=True)
    repository = tmp_path / "model_repository"
    export(tiny_model_dir, repository)
    clips = tones()
    with TritonServer(repository, extra_args=["--model-control-mode=explicit", "--load-model=*"]) as server:
        url = server.endpoints.grpc_url
        with EmotionClient(url, timeout_s=60) as client:
            expected = [client.classify(clip, RATE).label for clip in clips]
        assert len(set(expected)) > 1, expected
        with EmotionClient(url, timeout_s=60) as shared, Callers(shared, clips, expected) as callers:
            control = grpcclient.InferenceServerClient(url)
            for version in (v2, v3):
                time.sleep(1.5)
                export(version, repository)
                control.load_model("emotion")  # reloads the ensemble and the models it names
            time.sleep(1.5)
    print(dict(callers.outcomes), dict(callers.classes))
    assert set(callers.outcomes) == {"right"}, callers.outcomes
    assert callers.classes[4] > 0 and callers.classes[5] > 0  # v3's five classes reached the same client


def test_a_new_version_rolls_in_under_traffic_and_pin_rolls_it_back(tiny_model_dir: Path, tmp_path: Path) -> None:
    """`export --version next` beside the served version, `load` to serve it, `pin 1` and `load` to go
    back: the SDK and the two commands an operator types, with callers on a long-lived client throughout."""
    v2 = relabelled(tiny_model_dir, tmp_path / "v2")
    repository = tmp_path / "model_repository"
    export(tiny_model_dir, repository)
    clips = tones()
    v1_labels = (repository / "emotion" / "labels.txt").read_text().split()
    command = [sys.executable, "-m", "emotion_build"]
    with TritonServer(repository, extra_args=["--model-control-mode=explicit", "--load-model=*"]) as server:
        url = server.endpoints.grpc_url
        with EmotionClient(url, timeout_s=60) as operator:
            expected = [operator.classify(clip, RATE).label for clip in clips]
            with EmotionClient(url, timeout_s=60) as shared:
                callers = Callers(shared, clips, expected)
                with callers:
                    time.sleep(1.5)
                    export(v2, repository, "--version", "next")
                    operator.load_model()
                    served = {model.name: model.versions for model in operator.models()}
                    assert served == {"emotion": (2,)}, served
                    assert list(operator.model_info().labels) == [v1_labels[i] for i in PERMUTATION]
                    time.sleep(1.5)
                    pin = [*command, "pin", "--model-repository", str(repository), "1"]
                    subprocess.run(pin, check=True, timeout=120)
                    load = [sys.executable, "-m", "emotion_client", "load", "--url", url]
                    subprocess.run(load, check=True, timeout=300)
                    assert {model.name: model.versions for model in operator.models()} == {"emotion": (1,)}
                    with EmotionClient(url) as fresh:  # the operator's own description is of v2 until an answer says
                        assert list(fresh.model_info().labels) == v1_labels
                    time.sleep(1.5)
                assert [shared.classify(clip, RATE).label for clip in clips] == expected
                assert list(shared.model_info().labels) == v1_labels  # its answers told the shared client
    print(dict(callers.outcomes))
    assert set(callers.outcomes) == {"right"}, callers.outcomes
    assert sorted(path.name for path in (repository / "classifier").iterdir() if path.is_dir()) == ["1", "2"]
