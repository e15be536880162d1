"""`python -m emotion_build export|serve|demo`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main"]

UNTRAINED_BANNER = """\
################################################################################
#  UNTRAINED MODEL: random weights stand in for {source}.
#  Served labels are real, the scores are noise. Use --model with real weights.
################################################################################"""


def _parser() -> argparse.ArgumentParser:
    from .description import BatchingSettings, ModelDescription
    from .loading import DEFAULT_MODEL

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
        "--target",
        choices=("gpu", "cpu"),
        default="gpu",
        help="gpu: pytorch_libtorch on KIND_GPU (NVIDIA's container); cpu: the same model.pt "
        "run by a Python-backend runner (pip tritonserver)",
    )
    export.add_argument(
        "--random-init",
        choices=("tiny", "base"),
        default=None,
        help="ignore --model and export an UNTRAINED model of the same architecture",
    )
    export.add_argument("--seed", type=int, default=0, help="seed of --random-init weights")
    export.add_argument(
        "--min-duration-s", type=float, default=defaults.min_duration_s, help="shortest clip the server accepts"
    )
    export.add_argument(
        "--max-duration-s", type=float, default=defaults.max_duration_s, help="longest clip the server accepts"
    )
    export.add_argument("--max-batch-size", type=int, default=batching.max_batch_size)
    export.add_argument(
        "--max-queue-delay-us",
        type=int,
        default=batching.max_queue_delay_us,
        help="how long the dynamic batcher waits to fill a batch",
    )
    export.add_argument("--classifier-instances", type=int, default=batching.classifier_instances)
    export.add_argument("--preprocess-instances", type=int, default=batching.preprocess_instances)
    export.add_argument(
        "--intra-op-threads",
        type=int,
        default=batching.intra_op_threads,
        help="torch threads of the cpu target's runner (0: torch's default)",
    )

    serve = commands.add_parser(
        "serve",
        help="run the pip-installed tritonserver (CPU) on a repository",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    serve.add_argument("--model-repository", type=Path, default=Path("model_repository"))
    serve.add_argument("--host", default="127.0.0.1", help="address the endpoints are printed with")
    serve.add_argument("--grpc-port", type=int, default=8001)
    serve.add_argument("--http-port", type=int, default=8000)
    serve.add_argument("--metrics-port", type=int, default=8002)
    serve.add_argument("--log-verbose", type=int, default=0)
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


def _export(args: argparse.Namespace) -> int:
    from .description import BatchingSettings
    from .export import ExportError, describe, export
    from .loading import ModelUnavailableError, load_pretrained, random_model

    try:
        loaded = random_model(args.random_init, seed=args.seed) if args.random_init else load_pretrained(args.model)
        if loaded.untrained:
            print(UNTRAINED_BANNER.format(source=loaded.source), file=sys.stderr, flush=True)
        batching = BatchingSettings(
            max_batch_size=args.max_batch_size,
            max_queue_delay_us=args.max_queue_delay_us,
            classifier_instances=args.classifier_instances,
            preprocess_instances=args.preprocess_instances,
            intra_op_threads=args.intra_op_threads,
        )
        description = describe(
            loaded, batching=batching, min_duration_s=args.min_duration_s, max_duration_s=args.max_duration_s
        )
        result = export(loaded, args.output, args.target, description)
    except (ModelUnavailableError, ExportError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    untrained = " (UNTRAINED)" if result.provenance.untrained else ""
    print(f"wrote {result.repository} for {args.target}: labels {', '.join(result.description.labels)}{untrained}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from .server import serve

    if not (args.model_repository / "emotion" / "config.pbtxt").is_file():
        print(
            f"error: {args.model_repository} holds no exported repository; run "
            "`python -m emotion_build export --target cpu` first",
            file=sys.stderr,
        )
        return 2
    return serve(
        args.model_repository,
        grpc_port=args.grpc_port,
        http_port=args.http_port,
        metrics_port=args.metrics_port,
        host=args.host,
        log_verbose=args.log_verbose,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "export":
        return _export(args)
    if args.command == "demo":
        from .demo import run_demo

        return run_demo(args.model_repository, args.samples, model=args.model, rebuild=args.rebuild)
    return _serve(args)
