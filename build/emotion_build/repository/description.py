"""The one typed description of the served models.

Everything that names a tensor, a label, the sample rate or a batching knob is read from here
(for the build) or from the configs this module's values are rendered into (for the server and
the SDK). Nothing else spells these values out.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Literal

__all__ = [
    "AUDIO_INPUT",
    "CHUNK_INPUT",
    "CLASSIFIER_MODEL",
    "CLASSIFIER_OUTPUTS",
    "EMBEDDING_OUTPUT",
    "ENSEMBLE_MODEL",
    "LOGITS_OUTPUT",
    "MAX_ABS_AMPLITUDE",
    "PREPROCESS_MODEL",
    "PROBABILITIES_OUTPUT",
    "STREAM_DONE",
    "STREAM_MODEL",
    "STREAM_OUTPUTS",
    "TARGETS",
    "WAVEFORM",
    "WAVEFORM_ENDS",
    "WAVEFORM_ITEMS",
    "BatchingSettings",
    "ModelDescription",
    "ModelNames",
    "Provenance",
    "StreamSettings",
    "Target",
    "check_model_name",
]

Target = Literal["gpu", "cpu", "gpu-python"]
"""gpu: libtorch on KIND_GPU (NVIDIA's container). cpu: the Python-backend runner on KIND_CPU (pip
tritonserver). gpu-python: that runner on KIND_GPU, for servers without the libtorch backend."""
TARGETS: tuple[Target, ...] = ("gpu", "cpu", "gpu-python")

ENSEMBLE_MODEL = "emotion"
PREPROCESS_MODEL = "preprocess"
CLASSIFIER_MODEL = "classifier"
STREAM_MODEL = "stream"
"""Live audio: a stateful, decoupled model under Triton's sequence batcher (triton_models/stream_model.py)."""
CHUNK_INPUT = "chunk"
"""Stream input: the new samples of one stream at the model's rate, [1, samples] (any count, 0 at the end)."""
STREAM_OUTPUTS = ("start_s", "end_s")
"""Stream outputs beside the probabilities: each update's window, in seconds from the start of the stream."""
STREAM_DONE = "done"
"""Stream output of the last response to the END request alone: every update is in (end_s: the stream's length)."""

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,47}")


def check_model_name(name: str) -> str:
    """A name a client can type and Triton can serve: a letter, then letters, digits, `_` or `-`."""
    if not _NAME.fullmatch(name):
        raise ValueError(
            f"model name {name!r} must start with a letter and hold only letters, digits, '_' and '-' (48 at most)"
        )
    return name


@dataclasses.dataclass(frozen=True, slots=True)
class ModelNames:
    """The four served models of one checkpoint: the ensemble clients call by the checkpoint's name,
    and the models behind it. The default checkpoint keeps the names repositories have always had
    (emotion, preprocess, classifier, stream); any other NAME prefixes its own (NAME_preprocess, ...)."""

    ensemble: str
    preprocess: str
    classifier: str
    stream: str

    @classmethod
    def of(cls, name: str) -> ModelNames:
        if name == ENSEMBLE_MODEL:
            return cls(ENSEMBLE_MODEL, PREPROCESS_MODEL, CLASSIFIER_MODEL, STREAM_MODEL)
        check_model_name(name)
        return cls(name, f"{name}_{PREPROCESS_MODEL}", f"{name}_{CLASSIFIER_MODEL}", f"{name}_{STREAM_MODEL}")

    @property
    def all(self) -> tuple[str, str, str, str]:
        """In the order a repository is written and swapped: what the ensemble needs, then the ensemble."""
        return (self.preprocess, self.classifier, self.ensemble, self.stream)


AUDIO_INPUT = "audio"
"""Ensemble and preprocess input: one mono clip at the model's sample rate, shape [1, samples]."""
WAVEFORM = "waveform"
"""Classifier input: the normalised clip. Ragged: Triton concatenates a batch into one flat tensor."""
WAVEFORM_ENDS = "waveform_ends"
"""Classifier batch input: accumulated sample counts, i.e. where each clip of the flat batch ends."""
WAVEFORM_ITEMS = "waveform_items"
"""libtorch classifier batch input: each batch item's sample count (a request may carry several clips)."""
LOGITS_OUTPUT = "logits"
PROBABILITIES_OUTPUT = "probabilities"
EMBEDDING_OUTPUT = "embedding"
"""The pooled projector output (the utterance embedding the classifier head reads); batch-invariant too."""
CLASSIFIER_OUTPUTS = (LOGITS_OUTPUT, PROBABILITIES_OUTPUT, EMBEDDING_OUTPUT)
"""In the order the TorchScript forward() returns them: libtorch maps outputs by config order."""

MAX_ABS_AMPLITUDE = 32768.0
"""Default of the largest |sample| the server accepts: the full scale of 16-bit PCM.

Audio is float samples in [-1, 1]. A client that sends 16-bit PCM without scaling it still gets
the right answer (normalisation makes the model blind to scale), so that much is let through;
anything louder is not audio at any common scale (unscaled 24/32-bit PCM, garbage memory), and
from about 1.8e19 the float32 variance overflows and the clip would silently normalise to zeros.
Models with `do_normalize` false should export with a limit near 1."""

LABELS_FILE = "labels.txt"
MODEL_FILE = "model.pt"
PROVENANCE_FILE = "export.json"


@dataclasses.dataclass(frozen=True, slots=True)
class BatchingSettings:
    """Dynamic-batching knobs of the classifier (and the preprocess instances).

    The defaults are the cpu target's, chosen by measurement on a 2-core CPU (docs/benchmarks.md,
    `make bench-tune`): one single-threaded classifier instance per core beats one instance on
    every core, no queue delay (a CPU batch gains little, a delay is pure latency), a waiting queue
    cut into batches of 4 so that both instances get some, and each batch run in groups of similar
    length. `for_target("gpu")` gives the gpu target's.
    """

    max_batch_size: int = 8
    preferred_batch_size: int = 4
    """Batch the dynamic batcher cuts at when more requests wait (0, or max_batch_size and above: none).

    cpu target: a one-thread instance runs a 1 s clip about a fifth faster per clip in batches of
    4 than alone, and only a few per cent faster in 8; cutting at 4 leaves the rest of a queue to
    the next free instance instead of one instance taking it all while the other then runs single
    clips (docs/benchmarks.md). Triton closes a batch at this size only without a queue delay: with
    one, a batch waiting for a busy instance may still grow to max_batch_size."""
    max_queue_delay_us: int = 0
    classifier_instances: int = 2
    """cpu target: one per core, each on `intra_op_threads` threads (each holds a copy of the model)."""
    preprocess_instances: int = 2
    intra_op_threads: int = 1
    """Torch intra-op threads of each CPU runner instance; 0 lets torch decide (one per core)."""
    max_queue_size: int = 256
    """Requests a model may hold waiting; beyond it Triton rejects at once instead of queueing without bound."""
    queue_timeout_ms: int = 10_000
    """A request still queued after this long is rejected (clients may ask for less with a timeout); 0: never."""
    warmup_count: int = 2
    """Runs of a 1 s clip at load time: TorchScript's profiling executor optimises on its first runs."""
    max_padding_fraction: float = 0.1
    """CPU runner: a batch runs in groups of similar length, padding each group by at most this fraction.

    On CPU a padded sample costs as much as a real one (docs/benchmarks.md); inf runs the batch whole."""
    keep_freed_memory_mb: int = 512
    """CPU runner: freed memory (MiB) each instance keeps for the next batch instead of returning it.

    Without it every batch faults its activations in afresh, 10-25 % of the model's time on
    CPU (docs/benchmarks.md); the price is up to this much idle memory held per instance. 0: off."""
    classifier_on_cpu: bool = False
    """GPU targets: the classifier's instances on the CPU (KIND_CPU), e.g. the production libtorch
    classifier on a machine without a GPU, as the tests run it."""

    def __post_init__(self) -> None:
        if not self.max_padding_fraction >= 0:
            raise ValueError(f"max_padding_fraction must be >= 0 (or inf), got {self.max_padding_fraction}")
        if self.preferred_batch_size < 0:
            raise ValueError(f"preferred_batch_size must be >= 0 (0: none), got {self.preferred_batch_size}")
        if not 0 <= self.keep_freed_memory_mb < 2048:
            raise ValueError(f"keep_freed_memory_mb must be in [0, 2047], got {self.keep_freed_memory_mb}")

    @property
    def cut(self) -> int | None:
        """The preferred batch size Triton is given: none at 0, nor at max_batch_size and above
        (Triton refuses a preferred size above the max, and at the max it cuts there anyway)."""
        return self.preferred_batch_size if 0 < self.preferred_batch_size < self.max_batch_size else None

    @classmethod
    def for_target(cls, target: Target) -> BatchingSettings:
        """The defaults of one target. Both GPU targets take bigger batches and a 2 ms delay, and
        run a batch whole: a GPU pays for padding far less than for more launches. They run two
        instances: with one, the pip tritonserver's dynamic batcher left a request queued for 500 ms
        (its idle wait) now and then whenever batches took milliseconds and two or more requests
        were in flight (none with two), and two instances also overlap one batch's host work with the
        other's compute (docs/benchmarks.md, "GPU"). Their runner's host memory is small inputs and
        outputs, so it leaves malloc as it is."""
        if target in ("gpu", "gpu-python"):
            return cls(
                max_batch_size=32,
                preferred_batch_size=0,
                max_queue_delay_us=2000,
                classifier_instances=2,
                intra_op_threads=0,
                max_padding_fraction=math.inf,
                keep_freed_memory_mb=0,
            )
        return cls()


@dataclasses.dataclass(frozen=True, slots=True)
class StreamSettings:
    """The live streams one server holds (docs/streaming.md)."""

    max_streams: int = 64
    """Live streams at once; one more is refused, naming the limit. Each holds at most one window of
    audio (4 s: 256 KiB). Two cores classify about 24 streams at window 4 s / hop 2 s in real time
    (`make bench-live`); past that, updates fall behind rather than fail."""
    idle_timeout_s: float = 30.0
    """A stream silent this long is forgotten (here and by Triton's sequence batcher); a client that
    comes back then is told so. Frees what a vanished client held."""

    def __post_init__(self) -> None:
        if self.max_streams < 1:
            raise ValueError(f"max_streams must be >= 1, got {self.max_streams}")
        if not 0 < self.idle_timeout_s < math.inf:
            raise ValueError(f"the stream idle timeout must be a positive number of seconds, got {self.idle_timeout_s}")


@dataclasses.dataclass(frozen=True, slots=True)
class Provenance:
    """Where the served weights came from, so a repository can always say what it serves."""

    source_model: str
    untrained: bool
    target: str
    torch_version: str
    transformers_version: str
    dtype: str = "float32"
    max_abs_logit_diff: float | None = None
    """Largest |TorchScript - eager| logit seen by the export check."""
    max_abs_prob_diff: float | None = None
    """Largest |TorchScript - eager fp32| probability seen by the export check (the fp16 gate)."""
    top1_agreement: float | None = None
    """Share of the export check's clips whose top class matches the eager fp32 model."""
    traced_on: str = "cpu"
    """Device the module was traced and checked on."""
    conv_form: str = "native"
    """How the first and the positional convolutions run: "native" (cpu) or "matmul" (GPU targets)."""
    precision_choice: str = ""
    """Why the weights are in `dtype`: asked for, or what `--dtype auto` found on the exporting machine."""
    gate: Mapping[str, object] | None = None
    """The reduced-precision gate's figures on speech against eager fp32 (None for fp32 exports)."""
    engine: str = "torchscript"
    """What runs the classifier: "torchscript" (model.pt) or "openvino" (model.xml + model.bin, cpu target)."""
    description: Mapping[str, object] | None = None
    """The ModelDescription the configs were rendered from (ModelDescription.record); None in older exports."""

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Provenance:
        return cls(**json.loads(text))


@dataclasses.dataclass(frozen=True, slots=True)
class ModelDescription:
    """What the build learnt from the Hugging Face model and what the operator chose."""

    labels: tuple[str, ...]
    embedding_size: int = 256
    """Width of the pooled utterance embedding (the model's `classifier_proj_size`)."""
    sample_rate: int = 16000
    do_normalize: bool = True
    min_duration_s: float = 0.1
    max_duration_s: float = 30.0
    max_abs_amplitude: float = MAX_ABS_AMPLITUDE
    """Largest |sample| the server accepts before it refuses a clip as not audio."""
    receptive_field_samples: int = 400
    """Samples the convolutional feature encoder needs for one frame (wav2vec2-base: 400, 25 ms)."""
    batching: BatchingSettings = dataclasses.field(default_factory=BatchingSettings)
    untrained: bool = False
    weights_dtype: str = "float32"
    """Precision of the classifier's weights (float32, bfloat16, float16, int8+bfloat16: int8 encoder
    products, the rest bf16); tensors in and out are float32."""
    engine: str = "torchscript"
    """What runs the classifier (precision.Engine): the runner loads model.pt, or the OpenVINO IR."""
    stream: StreamSettings = dataclasses.field(default_factory=StreamSettings)
    name: str = ENSEMBLE_MODEL
    """The name clients call it by (its ensemble's); its other models are named from it (ModelNames)."""
    family: str = ""
    """The Hugging Face family it belongs to (wav2vec2, hubert, wavlm, data2vec-audio; families.py)."""

    def __post_init__(self) -> None:
        check_model_name(self.name)
        if not self.labels:
            raise ValueError("the model has no labels (id2label is empty)")
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"labels must be unique, got {list(self.labels)}")
        if any(("\n" in label or not label.strip()) for label in self.labels):
            raise ValueError(f"labels must be non-empty single-line strings, got {list(self.labels)}")
        if self.sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {self.sample_rate}")
        if not 0 < self.min_duration_s < self.max_duration_s:
            raise ValueError(
                f"need 0 < min_duration_s < max_duration_s, got {self.min_duration_s} and {self.max_duration_s}"
            )
        if self.min_samples < self.receptive_field_samples:
            raise ValueError(
                f"min_duration_s {self.min_duration_s} s ({self.min_samples} samples) is shorter than the model's "
                f"receptive field of {self.receptive_field_samples} samples, so such a clip gives no frame; "
                f"raise --min-duration-s to at least {self.receptive_field_samples / self.sample_rate:g}"
            )
        if not 0 < self.max_abs_amplitude < math.inf:
            raise ValueError(f"max_abs_amplitude must be a positive finite number, got {self.max_abs_amplitude}")
        if self.batching.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.batching.max_batch_size}")
        if self.batching.max_queue_size < self.batching.max_batch_size:
            raise ValueError(
                f"max_queue_size ({self.batching.max_queue_size}) must hold at least one batch "
                f"(max_batch_size {self.batching.max_batch_size})"
            )
        if self.batching.queue_timeout_ms < 0:
            raise ValueError(f"queue_timeout_ms must be >= 0 (0: no timeout), got {self.batching.queue_timeout_ms}")

    def record(self) -> dict[str, object]:
        """Every field, as export.json keeps it: the repository's configs can be rendered again from it."""
        return dataclasses.asdict(self)

    @classmethod
    def from_record(cls, record: Mapping[str, object]) -> ModelDescription:
        fields = dict(record)
        batching = fields.pop("batching", {})
        stream = fields.pop("stream", {})
        labels = fields.pop("labels", ())
        assert isinstance(batching, Mapping) and isinstance(stream, Mapping) and isinstance(labels, Sequence)
        return cls(
            labels=tuple(str(label) for label in labels),
            batching=BatchingSettings(**batching),
            stream=StreamSettings(**stream),
            **fields,  # type: ignore[arg-type]
        )

    @property
    def names(self) -> ModelNames:
        return ModelNames.of(self.name)

    @property
    def min_samples(self) -> int:
        return max(1, round(self.min_duration_s * self.sample_rate))

    @property
    def max_samples(self) -> int:
        return round(self.max_duration_s * self.sample_rate)

    @staticmethod
    def labels_from_id2label(id2label: Mapping[int, str] | Mapping[str, str]) -> tuple[str, ...]:
        """Order labels by class index, accepting the string keys JSON configs carry."""
        by_index = {int(k): str(v) for k, v in id2label.items()}
        if sorted(by_index) != list(range(len(by_index))):
            raise ValueError(f"id2label must cover indices 0..n-1, got {sorted(by_index)}")
        return tuple(by_index[i] for i in range(len(by_index)))


def ensemble_parameters(description: ModelDescription) -> dict[str, str]:
    """What the SDK reads from the ensemble's config, so the client never hard-codes any of it."""
    return {
        "labels": json.dumps(list(description.labels)),
        "sample_rate": str(description.sample_rate),
        "audio_input": AUDIO_INPUT,
        "probabilities_output": PROBABILITIES_OUTPUT,
        "logits_output": LOGITS_OUTPUT,
        "embedding_output": EMBEDDING_OUTPUT,
        "min_duration_s": repr(description.min_duration_s),
        "max_duration_s": repr(description.max_duration_s),
        "max_abs_amplitude": repr(description.max_abs_amplitude),
        "untrained": "true" if description.untrained else "false",
        "weights_dtype": description.weights_dtype,
        "engine": description.engine,
        "family": description.family,
        "stream_model": description.names.stream,
    }
