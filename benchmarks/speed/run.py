"""A whole run: export and serve the model, measure every system workload by workload, and return
what was measured as a `Run` (or, with --tune, the batching candidates' table)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from interleaved import PairedLatency
from tritonclient.utils import InferenceServerException

from emotion_build.export.calibration import calibration_speech
from emotion_build.export.pipeline import describe, export
from emotion_build.export.precision import GATE_CLIPS, GATE_LIMITS, PROVENANCE_NAMES
from emotion_build.export.speech import synthesise
from emotion_build.model.loading import LoadedModel, load_pretrained, random_model
from emotion_build.repository.description import BatchingSettings, Provenance, Target
from emotion_build.server.errors import ServerError
from emotion_build.triton_models.heap import keep_freed_memory
from emotion_build.triton_models.waveform import normalise

from .arithmetic import Arithmetic, clip_flops, measure_peaks
from .context import describe_served, machine_name, run_context
from .hf import HFProcess, hf_points
from .inprocess import ServedModule, load_served, torchscript_points
from .pairs import latency_first_pairs, lone_request_pairs, paired_c1
from .peers import PEERS, PeerFidelity, PeerProcess, fidelity, peer_points
from .progress import log
from .ranking import best, contenders
from .results import Interleaved, Point, Run, TuneResult, WorkloadSummary
from .rounds import interleaved_rounds
from .sdk import async_client_class
from .sections import write_section
from .served import first_requests, served, served_points
from .systems import HF_SYSTEMS
from .targets import gpu_target_notes
from .tune_report import tune_markdown
from .tuning import tune
from .workloads import RATE, Workload, guessed_clips_per_s, make_workloads


@dataclasses.dataclass(frozen=True)
class Bench:
    """What every run starts from: the model, its clips, and its exported repository."""

    target: Target
    settings: BatchingSettings
    """The target's default batching, which the exported repository is served with."""
    kept_mib: int
    """Freed memory this process keeps, as the cpu runner does (0: malloc's defaults)."""
    loaded: LoadedModel
    workloads: list[Workload]
    kind: str
    """What the clips are (espeak-ng speech, or the fallback)."""
    repository: Path
    provenance: Provenance
    model_ref: str
    """The HF model id or directory the pipeline loads."""
    scratch: Path


@contextlib.contextmanager
def prepared(args: argparse.Namespace) -> Iterator[Bench]:
    device = args.device
    cuda = device.startswith("cuda")
    # The pip tritonserver has no libtorch backend: on a GPU it serves the Python-backend runner on KIND_GPU.
    target: Target = "gpu-python" if cuda else "cpu"
    settings = BatchingSettings.for_target(target)
    # The in-process module runs with malloc as the cpu runner sets it up; the HF pipeline gets a
    # process of its own with the defaults (HFProcess).
    kept_mib = settings.keep_freed_memory_mb if keep_freed_memory(settings.keep_freed_memory_mb * 2**20) else 0
    loaded = load_pretrained(args.model) if args.model else random_model(args.random_init, family=args.family)
    workloads, kind = make_workloads(args.workloads, clips_per_length=4 if args.quick else 8, mixed_count=16)
    log(f"model {loaded.source}; clips: {kind}; workloads: {', '.join(w.name for w in workloads)}")
    with tempfile.TemporaryDirectory(prefix="emotion-bench-") as scratch:
        repository = args.repository
        if repository is None:
            repository = Path(scratch) / "model_repository"
            log(f"exporting a {target} repository, {args.dtype} (trace + parity check)")
            description = describe(loaded, batching=settings, min_duration_s=0.1, max_duration_s=30.0)
            export(loaded, repository, target, description, progress=log, dtype=args.dtype)
        provenance = Provenance.from_json((repository / "classifier" / "1" / "export.json").read_text())
        model_ref = args.model or str(Path(scratch) / "hf-model")
        if not args.model:
            loaded.model.save_pretrained(model_ref)
            loaded.feature_extractor.save_pretrained(model_ref)
        yield Bench(
            target, settings, kept_mib, loaded, workloads, kind, repository, provenance, model_ref, Path(scratch)
        )


def tuned(args: argparse.Namespace) -> str:
    """--tune: the candidates' table, written into --output after each candidate; returns it."""
    with prepared(args) as bench:
        repository = bench.repository
        if args.repository is not None:  # tuning rewrites configs: never those of the caller's repository
            repository = bench.scratch / "model_repository"
            shutil.copytree(args.repository, repository)
        workloads = bench.workloads
        expected = {w.name: guessed_clips_per_s(w, args.device) for w in workloads}
        names = [w.name for w in workloads]
        heading = {
            "date": datetime.date.today().isoformat(),
            "machine": machine_name(args.device),
            "model": bench.provenance.source_model,
        }

        def write(results: list[TuneResult]) -> None:
            write_section(args.output, "tune", tune_markdown(results, names, **heading))

        results = tune(
            repository,
            workloads,
            concurrencies=args.concurrency,
            budget_s=args.point_s,
            expected=expected,
            only=args.tune_only,
            after_each=write,
        )
        return tune_markdown(results, names, **heading)


def measured(args: argparse.Namespace, argv: Sequence[str] | None, *, started: float) -> Run:
    """Every system on every workload, close in time: other load on the machine then skews the
    systems of one workload alike."""
    device = args.device
    cuda = device.startswith("cuda")
    notes: list[str] = []
    points: list[Point] = []
    first: list[tuple[str, float]] = []
    pairs: list[PairedLatency] = []
    rounds: dict[str, Interleaved] = {}
    with prepared(args) as bench:
        settings, workloads = bench.settings, bench.workloads
        arithmetic = measured_arithmetic(bench, device)
        # The in-process side of the c=1 pairs runs on the threads of one served instance.
        server_threads = (settings.intra_op_threads or None) if not cuda and args.server_url is None else None
        server_label = (
            "running"
            if args.server_url
            else f"{settings.classifier_instances} x {server_threads} thread"
            if server_threads
            else "default"
        )
        with contextlib.ExitStack() as stack:
            url, pgid, ready_s = None, None, None
            if "served" not in args.skip:
                log("starting the server" if args.server_url is None else f"using the server at {args.server_url}")
                try:
                    url, pgid, ready_s = stack.enter_context(served(bench.repository, args.server_url))
                except ServerError as error:  # the other systems are still worth measuring
                    notes.append(f"Served rows skipped: the server did not start: {error}")
                    log(notes[-1])
                if url is not None and pgid is not None:
                    first = [("server start to ready (load + warmup)", (ready_s or 0.0) * 1000.0)]
                    first += first_requests(url, workloads)
            with_sdk = url is not None and "sdk" not in args.skip and async_client_class() is not None
            if url is not None and "sdk" not in args.skip and not with_sdk:
                notes.append(
                    "SDK rows skipped: this checkout's emotion_client has no AsyncEmotionClient.classify_many."
                )
            keep_freed_mib = bench.kept_mib if args.hf_malloc == "runner" else 0
            hf_process = (
                stack.enter_context(HFProcess(bench.model_ref, device, keep_freed_mib=keep_freed_mib))
                if "hf" not in args.skip
                else None
            )
            hf_attention = hf_process.attention if hf_process is not None else "-"
            hf_bf16 = (
                stack.enter_context(HFProcess(bench.model_ref, device, keep_freed_mib=keep_freed_mib, dtype="bf16"))
                if "hf" not in args.skip and "hf-bf16" not in args.skip
                else None
            )
            module: ServedModule | None = None
            one_thread: ServedModule | None = None
            if "torchscript" not in args.skip:
                module = load_served(bench.repository, device)
                if bench.provenance.engine == "openvino" and not cuda:
                    one_thread = load_served(bench.repository, device, threads=1)
            peer_processes: list[PeerProcess] = []
            fidelities: list[PeerFidelity] = []
            if "peers" not in args.skip and not cuda:
                peer_processes, fidelities = start_peers(bench, stack, notes)
            for workload in workloads:
                if hf_process is not None:
                    points += hf_points(hf_process, workload, batch_size=args.hf_batch_size, budget_s=args.point_s)
                if hf_bf16 is not None:
                    points += hf_points(hf_bf16, workload, batch_size=None, budget_s=args.point_s)
                if module is not None:
                    points += torchscript_points(
                        module,
                        workload,
                        batch_sizes=args.batch_sizes,
                        max_batch_audio_s=args.max_batch_audio_s,
                        budget_s=args.point_s,
                        device=device,
                        one_thread=one_thread,
                    )
                for peer in peer_processes:
                    try:
                        points += peer_points(peer, workload, batch_sizes=PEER_BATCH_SIZES, budget_s=args.point_s)
                    except RuntimeError as error:
                        notes.append(f"{PEERS[peer.system]} on {workload.name} failed: {error}")
                if url is not None:
                    reference = best(points, "torchscript", workload.name)
                    points += served_points(
                        url,
                        pgid,
                        [workload],
                        concurrencies=args.concurrency,
                        budget_s=args.point_s,
                        expected={
                            workload.name: reference.clips_per_s if reference else guessed_clips_per_s(workload, device)
                        },
                        with_sdk=with_sdk,
                        failures=notes,
                    )
                if url is not None and module is not None:
                    interleave(
                        module,
                        url,
                        pgid,
                        workload,
                        points,
                        pairs=pairs,
                        rounds=rounds,
                        hf_process=hf_process,
                        peer=best_peer(points, peer_processes, fidelities, workload.name),
                        server=server_label,
                        instances=settings.classifier_instances,
                        threads=server_threads,
                        args=args,
                        failures=notes,
                    )
        if module is not None and pgid is not None and not cuda and "latency-first" not in args.skip:
            try:
                pairs += latency_first_pairs(
                    bench.repository, bench.scratch, module, workloads, 2 * args.point_s, args.min_pairs
                )
            except (ServerError, InferenceServerException) as error:
                notes.append(f"latency-first server: {error}")
                log(notes[-1])
        served_label = describe_served(args, settings, bench.target, bench.provenance)
        if cuda:
            notes += gpu_target_notes(points, [w.name for w in workloads])

    context = run_context(
        args,
        argv,
        provenance=bench.provenance,
        kind=bench.kind,
        workloads=workloads,
        kept_mib=bench.kept_mib,
        hf_attention=hf_attention,
        served=served_label,
        points=points,
        started=started,
    )
    return Run(
        points=tuple(points),
        c1_pairs=tuple(pairs),
        rounds=rounds,
        section="throughput-gpu" if cuda else "throughput",
        context=context,
        workloads=tuple(WorkloadSummary(w.name, len(w.clips)) for w in workloads),
        first_requests=tuple(first),
        notes=tuple(notes),
        arithmetic=arithmetic,
        peers=tuple(fidelities),
    )


def measured_arithmetic(bench: Bench, device: str) -> Arithmetic:
    """The machine's matmul peaks (first, while nothing else of the run is busy) and the model's FLOPs."""
    cuda = device.startswith("cuda")
    dtypes = [torch.float32, torch.float16, torch.bfloat16] if cuda else [torch.float32, torch.bfloat16]
    log("matmul peaks of this machine")
    peaks = measure_peaks(dtypes, [0] if cuda else [1, 2], device=device)
    config = bench.loaded.model.config
    flops = {
        w.name: sum(clip_flops(config, clip.size) for clip in w.clips) / (w.mean_s * len(w.clips)) / 1e9
        for w in bench.workloads
    }
    # int8+bfloat16 is set against the bf16 peak: its int8 products run faster, so it may pass 100 %.
    served = {PROVENANCE_NAMES["int8"]: PROVENANCE_NAMES["bf16"]}.get(bench.provenance.dtype, bench.provenance.dtype)
    precision = {"hf": "float32", "hf_batch": "float32", "hf_bf16": "bfloat16"}
    precision |= {system: served for system in ("torchscript", "torchscript_1t", "served", "sdk")}
    return Arithmetic(peaks, flops, precision)


PEER_BATCH_SIZES = (1, 4)
"""Each peer one clip per call, and in padded batches of 4 (its best batch on 2 cores; 8 gained nothing)."""


def start_peers(
    bench: Bench, stack: contextlib.ExitStack, notes: list[str]
) -> tuple[list[PeerProcess], list[PeerFidelity]]:
    """Every peer in its own process on the same threads as the in-process module (torch's default), and
    each one's max |Δprob| against eager fp32 on the export gate's speech; a peer that fails is noted."""
    clips = synthesise(GATE_CLIPS, sample_rate=RATE, min_s=1.0, max_s=10.0)
    with torch.inference_mode():
        reference = torch.cat(
            [
                torch.softmax(
                    bench.loaded.model(input_values=torch.from_numpy(normalise(c, do_normalize=True))[None]).logits, -1
                )
                for c in clips
            ]
        ).numpy()
    calibration = calibration_speech(RATE, do_normalize=True)
    limit = GATE_LIMITS["int8"].max_abs_prob_diff
    processes, fidelities = [], []
    for system in PEERS:
        log(f"starting {PEERS[system]} (conversion{' and quantisation' if 'int8' in system else ''})")
        try:
            peer = stack.enter_context(
                PeerProcess(system, bench.model_ref, threads=torch.get_num_threads(), calibration=calibration)
            )
            fidelities.append(fidelity(peer, clips, reference, limit=limit))
        except RuntimeError as error:
            notes.append(f"{PEERS[system]} left out: {error}")
            log(notes[-1])
            continue
        processes.append(peer)
    return processes, fidelities


def best_peer(
    points: Sequence[Point], peers: Sequence[PeerProcess], fidelities: Sequence[PeerFidelity], workload: str
) -> PeerProcess | None:
    """The fastest peer on `workload` among those within the gate's limit of fp32."""
    passing = {f.system for f in fidelities if f.passes}
    ranked = [
        (found.audio_s_per_s, peer)
        for peer in peers
        if peer.system in passing and (found := best(points, peer.system, workload)) is not None
    ]
    return max(ranked, key=lambda pair: pair[0])[1] if ranked else None


def interleave(
    module: ServedModule,
    url: str,
    pgid: int | None,
    workload: Workload,
    points: Sequence[Point],
    *,
    pairs: list[PairedLatency],
    rounds: dict[str, Interleaved],
    hf_process: HFProcess | None,
    peer: PeerProcess | None,
    server: str,
    instances: int,
    threads: int | None,
    args: argparse.Namespace,
    failures: list[str],
) -> None:
    """The workload's comparisons measured alternately (interleaved.py): c=1 pairs, then the best
    setting of each system in rounds."""
    try:
        pairs.append(
            paired_c1(
                module,
                url,
                workload,
                threads=threads,
                server=server,
                instances=instances,
                budget_s=2 * args.point_s,
                min_pairs=args.min_pairs,
                device=args.device,
            )
        )
    except InferenceServerException as error:
        failures.append(f"c=1 pairs on {workload.name} failed: {error}")
        log(failures[-1])
    if hf_process is not None:
        try:
            pairs.append(
                lone_request_pairs(
                    hf_process,
                    url,
                    workload,
                    server=server,
                    instances=instances,
                    budget_s=2 * args.point_s,
                    min_pairs=args.min_pairs,
                )
            )
        except (InferenceServerException, RuntimeError) as error:
            failures.append(f"lone-request pairs with the HF pipeline on {workload.name} failed: {error}")
            log(failures[-1])
    ts, srv = contenders(points, "torchscript", workload.name), contenders(points, "served", workload.name)
    if not ts or not srv or args.rounds == 0:
        return
    hf = tuple(found for system in HF_SYSTEMS if (found := best(points, system, workload.name)) is not None)
    try:
        rounds[workload.name] = interleaved_rounds(
            module,
            url,
            pgid,
            workload,
            inprocess=ts,
            served=srv,
            hf=hf,
            hf_process=hf_process,
            peer=contenders(points, peer.system, workload.name) if peer is not None else (),
            peer_process=peer,
            rounds=args.rounds,
            budget_s=args.point_s,
            device=args.device,
        )
    except RuntimeError as error:
        failures.append(f"interleaved rounds on {workload.name} failed: {error}")
        log(failures[-1])
