"""What a run measured, in the types the report reads: the seam between measuring and reporting.

`Run` is what `--json` saves and `--render` reads back, so a saved run's tables can be made again
(and compared) without measuring anything.
"""

from __future__ import annotations

import dataclasses
import json

from interleaved import PairedLatency

from emotion_build.repository.description import BatchingSettings

from .arithmetic import Arithmetic


@dataclasses.dataclass(frozen=True)
class Point:
    """One measured configuration: a system on a workload at one batch size or concurrency."""

    system: str
    workload: str
    setting: int
    """Batch size (HF, TorchScript) or concurrency (served)."""
    audio_s_per_s: float
    clips_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    cpu_s_per_audio_s: float | None
    """CPU seconds spent (every process of the system, the load generator included) per audio second."""
    load: float
    """1-minute load average when the point finished: other work on the machine skews everything."""
    detail: dict[str, float] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Interleaved:
    """A workload's best settings of each system measured again in turn, round by round: per round
    the faster of each system's contenders (`ranking.contenders`)."""

    inprocess: tuple[Point, ...]
    served: tuple[Point, ...]
    hf: tuple[Point, ...] = ()
    """The HF pipeline one clip per call, per round; empty where it was skipped."""
    measured: tuple[Point, ...] = ()
    """Every point the rounds measured, the slower contenders included."""
    hf_batch: tuple[Point, ...] = ()
    """The HF pipeline with batch_size, per round; empty where it was skipped."""
    peer: tuple[Point, ...] = ()
    """The fastest peer within the gate's limit (peers.py), per round; empty where none was measured."""

    def served_vs_peer(self) -> tuple[float, ...]:
        return _ratios(self.served, self.peer)

    def served_vs_inprocess(self) -> tuple[float, ...]:
        return _ratios(self.served, self.inprocess)

    def served_vs_hf(self) -> tuple[float, ...]:
        return _ratios(self.served, self.hf)

    def served_vs_hf_batched(self) -> tuple[float, ...]:
        return _ratios(self.served, self.hf_batch)


def _ratios(numerators: tuple[Point, ...], denominators: tuple[Point, ...]) -> tuple[float, ...]:
    """Round by round; none where the denominator's system was not measured."""
    if not denominators:
        return ()
    return tuple(n.audio_s_per_s / d.audio_s_per_s for n, d in zip(numerators, denominators, strict=True))


@dataclasses.dataclass(frozen=True, slots=True)
class TuneResult:
    """One candidate of the batching sweep: its server's points, first requests and failures."""

    settings: BatchingSettings
    points: list[Point]
    first: list[tuple[str, float]]
    failures: list[str]


@dataclasses.dataclass(frozen=True, slots=True)
class WorkloadSummary:
    """A workload as the report names it; the clips themselves stay with the measuring."""

    name: str
    clips: int


@dataclasses.dataclass(frozen=True, slots=True)
class PeerFidelity:
    """A peer's answers against eager fp32 on the export gate's speech, one clip per call."""

    system: str
    max_abs_prob_diff: float
    clips: int
    limit: float
    """The gate's limit (int8's and bf16's): a peer beyond it is shown, not compared with."""

    @property
    def passes(self) -> bool:
        return self.max_abs_prob_diff <= self.limit


@dataclasses.dataclass(frozen=True, slots=True)
class RunContext:
    """The report's first sentence and last line: where, on what and how the run measured."""

    date: str
    machine: str
    model: str
    clips: str
    hf_attention: str
    hf_batch_size: int
    hf_process: str
    inprocess_memory: str
    served: str
    load: str
    """Range of the 1-minute load average over the points."""
    command: str
    wall_min: float


@dataclasses.dataclass(frozen=True, slots=True)
class Run:
    """Everything a run's tables and plot are made of. Its fields are the keys of the --json file, in
    the order the file has them: the first three were its only keys before --render."""

    points: tuple[Point, ...]
    c1_pairs: tuple[PairedLatency, ...]
    rounds: dict[str, Interleaved]
    """Per workload name, in the order measured."""
    section: str
    """The marked section of docs/benchmarks.md the tables go in (`sections.MARKERS`)."""
    context: RunContext
    workloads: tuple[WorkloadSummary, ...]
    first_requests: tuple[tuple[str, float], ...]
    """(what, latency ms) of the server's first requests and its start."""
    notes: tuple[str, ...]
    arithmetic: Arithmetic | None = None
    """The model's FLOPs per audio-second and the machine's matmul peaks (runs before it lack them)."""
    peers: tuple[PeerFidelity, ...] = ()
    """Each peer's fidelity (peers.py); runs before them have none."""

    @property
    def workload_names(self) -> list[str]:
        return [workload.name for workload in self.workloads]

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> Run:
        saved = json.loads(text)
        return cls(
            points=tuple(Point(**point) for point in saved["points"]),
            c1_pairs=tuple(PairedLatency(**pair) for pair in saved["c1_pairs"]),
            rounds={
                name: Interleaved(**{field: tuple(Point(**p) for p in row) for field, row in measured.items()})
                for name, measured in saved["rounds"].items()
            },
            section=saved["section"],
            context=RunContext(**saved["context"]),
            workloads=tuple(WorkloadSummary(**workload) for workload in saved["workloads"]),
            first_requests=tuple((label, ms) for label, ms in saved["first_requests"]),
            notes=tuple(saved["notes"]),
            arithmetic=Arithmetic.from_dict(saved["arithmetic"]) if saved.get("arithmetic") else None,
            peers=tuple(PeerFidelity(**peer) for peer in saved.get("peers", ())),
        )
