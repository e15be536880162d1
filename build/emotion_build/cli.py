"""`python -m emotion_build export|serve|pin|build-backend|demo`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .export.speech import SpeechUnavailableError, read_speech
from .model.names import DEFAULT_MODEL, FAMILY_NAMES, UNTRAINED_BANNER
from .repository.description import (
    ENSEMBLE_MODEL,
    TARGETS,
    BatchingSettings,
    ModelDescription,
    ModelNames,
    StreamSettings,
)
from .repository.layout import VersionRequest, destination_version, emotion_models, read_config
from .repository.writer import pin_version
from .server.errors import HOW_TO_BUILD, ServerError
from .server.install import find_tritonserver
from .server.libtorch_backend import (
    ARCHIVE_NAME,
    GITHUB,
    BackendBuildError,
    build_backend,
    check_backend,
    default_backends_dir,
)
from .server.security import API_GROUPS, DEFAULT_PROTECTED_APIS, DEFAULT_TOKEN_HEADER, GrpcTLS, TokenAuth, read_token
from .server.serve import serve

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:

    defaults = ModelDescription(labels=("_",))
    batching = BatchingSettings()
    parser = argparse.ArgumentParser(prog="python -m emotion_build", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    export = commands.add_parser(
        "export",
        help="trace the HF classifier, check it against eager, write a Triton repository",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    export.add_argument("--model", default=DEFAULT_MODEL, help="Hugging Face model id or local directory")
    export.add_argument("--output", type=Path, default=Path("model_repository"), help="repository directory")
    export.add_argument(
        "--name",
        default=ENSEMBLE_MODEL,
        help="the name clients call the model by; other models in --output stay as they are, and a name that "
        "would overwrite another model's is refused (docs/serving.md, 'Several models')",
    )
    export.add_argument(
        "--version",
        type=_version_request,
        default=None,
        metavar="N|next",
        help="write version N (or the next number) of --name beside its others; Triton serves the newest, "
        "`pin` goes back. Without it the model of that name is replaced whole, as version 1",
    )
    export.add_argument(
        "--target",
        choices=TARGETS,
        default="gpu",
        help="gpu: pytorch_libtorch on KIND_GPU (NVIDIA's container); cpu: the same model.pt "
        "run by a Python-backend runner (pip tritonserver); gpu-python: that runner on KIND_GPU "
        "(pip tritonserver on a GPU machine)",
    )
    export.add_argument(
        "--random-init",
        choices=("tiny", "base", "large"),
        default=None,
        help="ignore --model and export an UNTRAINED model of --family's architecture (large: the "
        "stable-layer-norm layout of wav2vec2-large / XLSR-53, HuBERT-large, WavLM-large)",
    )
    export.add_argument(
        "--family",
        choices=FAMILY_NAMES,
        default="wav2vec2",
        help="architecture of --random-init (docs/families.md)",
    )
    export.add_argument("--seed", type=int, default=0, help="seed of --random-init weights")
    export.add_argument(
        "--dtype",
        choices=("auto", "fp32", "bf16", "fp16", "int8"),
        default="auto",
        help="precision of the weights in model.pt (inputs and outputs stay FP32). int8: the encoder's linear "
        "maps as int8 products (weights rounded by GPTQ on espeak-ng speech), the rest bf16. auto, for --target "
        "cpu: int8 where this CPU has int8 dot products (avx512_vnni/amx_int8) and bf16 (avx512_bf16/amx_bf16), "
        "bf16 where it has bf16 only, else fp32. int8, bf16 and fp16 must pass a precision gate on speech "
        "against fp32 eager (max |Δprob| <= 2e-2 int8 and bf16, 1e-2 fp16; top-1 agreement >= 99%%, alone and "
        "in ragged batches): auto falls back (int8, bf16, fp32) when they do not, an explicit --dtype fails. "
        "fp16 is for the GPU targets (traced on CUDA when present)",
    )
    export.add_argument(
        "--engine",
        choices=("auto", "openvino", "torchscript"),
        default="auto",
        help="what runs the cpu target's classifier. auto: OpenVINO where it is installed (it ran the model 1.7-2x "
        "faster than TorchScript on CPUs, docs/benchmarks.md), else TorchScript, and TorchScript where OpenVINO "
        "cannot convert or check the model. The GPU targets always serve TorchScript",
    )
    export.add_argument(
        "--gate-audio",
        type=Path,
        default=None,
        help="folder of speech files (wav/flac/ogg, any rate) for the precision gate instead of espeak-ng clips",
    )
    export.add_argument(
        "--min-duration-s", type=float, default=defaults.min_duration_s, help="shortest clip the server accepts"
    )
    export.add_argument(
        "--max-duration-s", type=float, default=defaults.max_duration_s, help="longest clip the server accepts"
    )
    export.add_argument(
        "--max-abs-amplitude",
        type=float,
        default=defaults.max_abs_amplitude,
        help="largest |sample| the server accepts; louder clips are refused as not audio (default: 16-bit PCM "
        "full scale, harmless to a normalising model; use ~1 for a model without do_normalize)",
    )
    cpu, gpu = BatchingSettings.for_target("cpu"), BatchingSettings.for_target("gpu")
    export.add_argument(
        "--max-batch-size",
        type=int,
        default=argparse.SUPPRESS,
        help=f"largest batch the classifier runs (default: {cpu.max_batch_size} for cpu, {gpu.max_batch_size} for gpu)",
    )
    export.add_argument(
        "--preferred-batch-size",
        type=int,
        default=argparse.SUPPRESS,
        help="batch the dynamic batcher cuts at when more requests wait, leaving the rest to the next free "
        f"instance (default: {cpu.preferred_batch_size} for cpu, {gpu.preferred_batch_size} for gpu; 0 or "
        "--max-batch-size and above: none)",
    )
    export.add_argument(
        "--max-queue-delay-us",
        type=int,
        default=argparse.SUPPRESS,
        help="how long the dynamic batcher waits to fill a batch "
        f"(default: {cpu.max_queue_delay_us} for cpu, {gpu.max_queue_delay_us} for gpu)",
    )
    export.add_argument(
        "--max-queue-size",
        type=int,
        default=batching.max_queue_size,
        help="requests each model may hold waiting; more are refused at once with UNAVAILABLE (REJECT policy)",
    )
    export.add_argument(
        "--queue-timeout-ms",
        type=int,
        default=batching.queue_timeout_ms,
        help="a request queued longer than this is refused with UNAVAILABLE (0: no limit)",
    )
    export.add_argument(
        "--classifier-instances",
        type=int,
        default=argparse.SUPPRESS,
        help=f"classifier model instances (default: {cpu.classifier_instances} for cpu, "
        f"{gpu.classifier_instances} for gpu; on a CPU, one per core with --intra-op-threads 1)",
    )
    export.add_argument("--preprocess-instances", type=int, default=batching.preprocess_instances)
    export.add_argument(
        "--intra-op-threads",
        type=int,
        default=argparse.SUPPRESS,
        help=f"torch threads of each cpu runner instance (default {cpu.intra_op_threads}; 0: torch's default)",
    )
    export.add_argument(
        "--keep-freed-memory-mb",
        type=int,
        default=argparse.SUPPRESS,
        help="freed memory each cpu runner instance keeps for its next batch instead of faulting it in again "
        f"(default {cpu.keep_freed_memory_mb} for cpu, {gpu.keep_freed_memory_mb} for the gpu targets; 0: off)",
    )

    streams = StreamSettings()
    export.add_argument(
        "--max-streams",
        type=int,
        default=streams.max_streams,
        help="live streams the stream model holds at once; one more is refused (docs/streaming.md)",
    )
    export.add_argument(
        "--stream-idle-timeout-s",
        type=float,
        default=streams.idle_timeout_s,
        help="a live stream silent this long is forgotten, and what it held freed",
    )
    export.add_argument(
        "--classifier-on-cpu",
        action="store_true",
        help="gpu and gpu-python targets: put the classifier's instances on the CPU (KIND_CPU), e.g. the libtorch "
        "classifier of --target gpu on a machine without a GPU (serve --backends-dir)",
    )

    serve = commands.add_parser(
        "serve",
        help="run the pip-installed tritonserver on a repository (gpu: with the libtorch backend of build-backend)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    serve.add_argument("--model-repository", type=Path, default=Path("model_repository"))
    serve.add_argument("--host", default="127.0.0.1", help="address the endpoints are printed with")
    serve.add_argument("--grpc-port", type=int, default=8001)
    serve.add_argument("--http-port", type=int, default=8000)
    serve.add_argument("--metrics-port", type=int, default=8002)
    serve.add_argument("--log-verbose", type=int, default=0)
    serve.add_argument(
        "--backends-dir",
        type=Path,
        default=None,
        help="directory of further Triton backends served beside the pip server's python one, e.g. the libtorch "
        "backend (pytorch/) that `build-backend` builds (default: the one in this environment, for a repository "
        "whose classifier needs it)",
    )
    serve.add_argument(
        "--http-host",
        default=None,
        help="address of the HTTP and metrics endpoints, which have no TLS (default: --host, or 127.0.0.1 "
        "when gRPC uses TLS)",
    )
    tls = serve.add_argument_group("gRPC TLS", "the gRPC endpoint accepts TLS connections only")
    tls.add_argument("--grpc-tls-cert", type=Path, default=None, help="PEM server certificate chain")
    tls.add_argument("--grpc-tls-key", type=Path, default=None, help="PEM private key of --grpc-tls-cert")
    tls.add_argument(
        "--grpc-tls-client-ca",
        type=Path,
        default=None,
        help="PEM CA certificate: require mutual TLS, with client certificates signed by it",
    )
    auth = serve.add_argument_group(
        "token auth", "requests to the protected APIs must carry a header holding the token (gRPC and HTTP)"
    )
    auth.add_argument(
        "--auth-token-file",
        type=Path,
        default=None,
        help="file whose first line is the token (e.g. from `openssl rand -hex 32`); no file: no auth",
    )
    auth.add_argument("--auth-header", default=DEFAULT_TOKEN_HEADER, help="header the token travels in")
    auth.add_argument(
        "--auth-apis",
        default=",".join(DEFAULT_PROTECTED_APIS),
        help=f"comma-separated API groups that need the token, of: {', '.join(API_GROUPS)}",
    )
    serve.add_argument(
        "--model-control",
        choices=("none", "explicit"),
        default="none",
        help="explicit: models load and unload on request (`emotion-client load`), which is how a new version "
        "is rolled out under traffic (docs/serving.md); every model in the repository loads at start either way",
    )
    pin = commands.add_parser(
        "pin",
        help="serve one version of a model alone, or the newest again (then `emotion-client load NAME`)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    pin.add_argument("--model-repository", type=Path, default=Path("model_repository"))
    pin.add_argument("--name", default=ENSEMBLE_MODEL, help="the model")
    pin.add_argument(
        "version", type=_pin_request, metavar="N|latest", help="the version to serve, or latest: the newest"
    )
    backend = commands.add_parser(
        "build-backend",
        help="build Triton's libtorch backend (r24.10) against this environment's torch, for serve --backends-dir",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    backend.add_argument("--output", type=Path, default=default_backends_dir(), help="backends directory")
    backend.add_argument(
        "--sources",
        type=Path,
        default=None,
        help=f"archive of the four source trees ({ARCHIVE_NAME}); when it is missing, the branches are cloned",
    )
    backend.add_argument("--github", default=GITHUB, help="where the repositories are cloned from")
    demo = commands.add_parser(
        "demo",
        help="export a CPU repository if needed, serve it, classify audio files, stop",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    demo.add_argument("--model", default=DEFAULT_MODEL, help="used when the repository has to be exported")
    demo.add_argument("--model-repository", type=Path, default=Path("model_repository"))
    demo.add_argument("--samples", type=Path, default=Path("samples"), help="directory of audio files")
    demo.add_argument("--rebuild", action="store_true", help="export again even if the repository exists")
    return parser


def _version_request(text: str) -> VersionRequest:
    if text == "next":
        return "next"
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer or 'next', got {text!r}")
    return int(text)


def _pin_request(text: str) -> int | None:
    if text == "latest":
        return None
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer or 'latest', got {text!r}")
    return int(text)


def _batching(args: argparse.Namespace) -> BatchingSettings:
    """The export flags over the target's defaults: a flag left out takes the target's value."""

    defaults = BatchingSettings.for_target(args.target)
    if args.classifier_on_cpu and args.target == "cpu":
        raise ValueError("--classifier-on-cpu is for the gpu and gpu-python targets: the cpu target's is there already")
    return BatchingSettings(
        max_batch_size=getattr(args, "max_batch_size", defaults.max_batch_size),
        preferred_batch_size=getattr(args, "preferred_batch_size", defaults.preferred_batch_size),
        max_queue_delay_us=getattr(args, "max_queue_delay_us", defaults.max_queue_delay_us),
        classifier_instances=getattr(args, "classifier_instances", defaults.classifier_instances),
        preprocess_instances=args.preprocess_instances,
        intra_op_threads=getattr(args, "intra_op_threads", defaults.intra_op_threads),
        max_queue_size=args.max_queue_size,
        queue_timeout_ms=args.queue_timeout_ms,
        max_padding_fraction=defaults.max_padding_fraction,
        keep_freed_memory_mb=getattr(args, "keep_freed_memory_mb", defaults.keep_freed_memory_mb),
        classifier_on_cpu=args.classifier_on_cpu,
    )


def _export(args: argparse.Namespace) -> int:
    # Only here: torch and transformers load for an export, not for `serve` or `build-backend`.
    from .export.pipeline import ExportError, describe, export
    from .model.loading import ModelUnavailableError, load_pretrained, random_model

    try:
        batching = _batching(args)  # a bad flag or a clash fails before minutes of loading and tracing
        destination_version(args.output.resolve(), ModelNames.of(args.name), args.version)
        loaded = (
            random_model(args.random_init, seed=args.seed, family=args.family)
            if args.random_init
            else load_pretrained(args.model)
        )
        if loaded.untrained:
            print(UNTRAINED_BANNER.format(source=loaded.source), file=sys.stderr, flush=True)
        description = describe(
            loaded,
            batching=batching,
            min_duration_s=args.min_duration_s,
            max_duration_s=args.max_duration_s,
            max_abs_amplitude=args.max_abs_amplitude,
            stream=StreamSettings(max_streams=args.max_streams, idle_timeout_s=args.stream_idle_timeout_s),
            name=args.name,
        )
        gate_speech = None
        if args.gate_audio is not None:
            clips = read_speech(
                args.gate_audio,
                sample_rate=description.sample_rate,
                min_samples=description.min_samples,
                max_samples=description.max_samples,
            )
            gate_speech = (clips, f"{len(clips)} files in {args.gate_audio}")
        result = export(
            loaded,
            args.output,
            args.target,
            description,
            dtype=args.dtype,
            gate_speech=gate_speech,
            engine="torchscript" if args.target != "cpu" and args.engine == "auto" else args.engine,
            version=args.version,
        )
    except (ModelUnavailableError, ExportError, SpeechUnavailableError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    untrained = " (UNTRAINED)" if result.provenance.untrained else ""
    print(
        f"wrote model '{result.description.name}' version {result.version} to {result.repository} for "
        f"{args.target}: labels {', '.join(result.description.labels)}, {result.provenance.dtype} weights on "
        f"{result.provenance.engine}{untrained}"
    )
    return 0


def _pin(args: argparse.Namespace) -> int:
    try:
        version = pin_version(args.model_repository, args.name, args.version)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    which = "alone" if args.version is not None else "(the newest)"
    print(
        f"model '{args.name}' now serves version {version} {which}; with --model-control explicit, "
        f"`emotion-client --model {args.name} load` makes the server read it (else its next restart)"
    )
    return 0


def _security(args: argparse.Namespace) -> tuple[GrpcTLS | None, TokenAuth | None]:
    """The serve flags as typed settings; ValueError says which flag is wrong."""

    tls = None
    if args.grpc_tls_cert is not None or args.grpc_tls_key is not None:
        if args.grpc_tls_cert is None or args.grpc_tls_key is None:
            raise ValueError("--grpc-tls-cert and --grpc-tls-key go together")
        tls = GrpcTLS(certificate=args.grpc_tls_cert, private_key=args.grpc_tls_key, client_ca=args.grpc_tls_client_ca)
    elif args.grpc_tls_client_ca is not None:
        raise ValueError("--grpc-tls-client-ca needs --grpc-tls-cert and --grpc-tls-key")
    auth = None
    if args.auth_token_file is not None:
        apis = tuple(api.strip() for api in args.auth_apis.split(",") if api.strip())
        auth = TokenAuth(token=read_token(args.auth_token_file), header=args.auth_header, apis=apis)
    return tls, auth


def _backends_dir(args: argparse.Namespace) -> Path | None:
    """--backends-dir, or for a repository whose classifier needs libtorch, the backend `build-backend`
    left in this environment; ValueError says how to get one."""

    needs_libtorch = False
    for names in emotion_models(args.model_repository).values():
        config = read_config(args.model_repository / names.classifier)
        needs_libtorch |= config is not None and config.platform == "pytorch_libtorch"
    chosen: Path | None = args.backends_dir
    if chosen is None and needs_libtorch:
        chosen = default_backends_dir()
        if not chosen.is_dir():
            raise ValueError(
                f"{args.model_repository} is a gpu-target repository: its classifier needs Triton's libtorch backend, "
                "which the pip tritonserver lacks. Serve it in NVIDIA's Triton container (docker/), or build the "
                f"backend for this server with {HOW_TO_BUILD} (and export with --classifier-on-cpu on a machine "
                "without a GPU), or export --target cpu"
            )
    if chosen is not None and needs_libtorch:
        try:
            check_backend(chosen)
        except BackendBuildError as error:
            raise ValueError(str(error)) from error
    return chosen


def _serve(args: argparse.Namespace) -> int:

    if not emotion_models(args.model_repository):
        print(
            f"error: {args.model_repository} holds no exported repository; run "
            "`python -m emotion_build export --target cpu` first",
            file=sys.stderr,
        )
        return 2
    try:
        backends_dir = _backends_dir(args)
        tls, auth = _security(args)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        install = find_tritonserver(extra_backends=backends_dir) if backends_dir is not None else None
        return serve(
            args.model_repository,
            grpc_port=args.grpc_port,
            http_port=args.http_port,
            metrics_port=args.metrics_port,
            host=args.host,
            log_verbose=args.log_verbose,
            tls=tls,
            auth=auth,
            http_host=args.http_host,
            install=install,
            extra_args=["--model-control-mode=explicit", "--load-model=*"] if args.model_control == "explicit" else (),
        )
    except ServerError as error:  # not installed, or an environment the stub cannot use
        print(f"error: {error}", file=sys.stderr)
        return 2


def _build_backend(args: argparse.Namespace) -> int:

    def say(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    try:
        build_backend(args.output, archive=args.sources, github=args.github, progress=say)
    except (BackendBuildError, ServerError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "export":
        return _export(args)
    if args.command == "build-backend":
        return _build_backend(args)
    if args.command == "pin":
        return _pin(args)
    if args.command == "demo":
        from .demo import run_demo  # torch and transformers, as for an export

        return run_demo(args.model_repository, args.samples, model=args.model, rebuild=args.rebuild)
    return _serve(args)
