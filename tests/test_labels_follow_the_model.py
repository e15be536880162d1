"""A long-lived client never labels an answer with another model version's labels.

The model is replaced under traffic as an operator would (export again, then Triton's explicit
model control loads it) by checkpoints that give every clip the same label under a different class
order: v2 permutes v1's head and labels together, v3 adds a fifth class that never wins. A client
that kept v1's labels would name v2's answers wrongly; the SDK labels each answer from the response
(the classification extension on the logits) and reads the model again when they change.
"""

from __future__ import annotations

import collections
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


def export(model_dir: Path, repository: Path) -> None:
    export_cpu_repository(model_dir, repository, "--classifier-instances", "1")


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
        outcomes: collections.Counter[str] = collections.Counter()
        classes: collections.Counter[int] = collections.Counter()
        done = threading.Event()

        def keep_calling(client: EmotionClient) -> None:
            count = 0
            while not done.is_set():
                index = count % len(clips)
                count += 1
                try:
                    result = client.classify(clips[index], RATE)
                except EmotionClientError as error:
                    outcomes[f"{type(error).__name__}: {error.message[:100]}"] += 1
                    continue
                except Exception as error:  # an untyped failure: the test fails on it
                    outcomes[f"untyped {error!r}"] += 1
                    continue
                outcomes["right" if result.label == expected[index] else f"wrong label {result.label}"] += 1
                classes[len(result.scores)] += 1

        with EmotionClient(url, timeout_s=60) as shared:  # one long-lived client, two threads
            callers = [threading.Thread(target=keep_calling, args=(shared,)) for _ in range(2)]
            for caller in callers:
                caller.start()
            try:
                control = grpcclient.InferenceServerClient(url)
                for version in (v2, v3):
                    time.sleep(1.5)
                    export(version, repository)
                    control.load_model("emotion")  # reloads the ensemble and the models it names
                time.sleep(1.5)
            finally:
                done.set()
                for caller in callers:
                    caller.join()
    print(dict(outcomes), dict(classes))
    assert set(outcomes) == {"right"}, outcomes
    assert classes[4] > 0 and classes[5] > 0  # v3's five classes reached the same client
