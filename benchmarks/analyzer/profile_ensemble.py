"""`make model-analyzer`: NVIDIA's Triton Model Analyzer searching the cpu export's batching settings.

    make model-analyzer REPOSITORY=model_repository SAMPLES=samples MA_DIR=model-analyzer
    .venv/bin/python benchmarks/analyzer/profile_ensemble.py --model-analyzer .venv-ma/bin/model-analyzer \\
        --repository model_repository --samples samples --output model-analyzer

Model Analyzer lives in a venv of its own (benchmarks/analyzer/requirements.txt: it pins
optuna, numba, docker and more). This script runs in the project's venv: it writes the request
data with `emotion-client perf-data`'s code, writes Model Analyzer's config (JSON, which its YAML
reader takes) and runs `model-analyzer profile` in local launch mode, where it starts the pip
tritonserver through benchmarks/analyzer/tritonserver with the settings of each candidate.
Model Analyzer 1.44 profiles an ensemble only in quick search (or optuna) mode, over the
composing models' instance count and max batch size; it does not search queue delays there.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2 as mc

from emotion_build.repository.description import ENSEMBLE_MODEL, ModelNames
from emotion_build.server.endpoints import free_ports
from emotion_client.audio import collect_audio_files
from emotion_client.codec import parse_model_info
from emotion_client.perf_data import load_perf_clips, write_perf_data

__all__ = ["check_repository", "main", "model_analyzer_config"]

SERVER_WRAPPER = Path(__file__).resolve().with_name("tritonserver")


def check_repository(repository: Path, model: str = ENSEMBLE_MODEL) -> None:
    """Refuse what would make Model Analyzer's search stop at its first step without saying why.

    Quick search starts every composing model at max_batch_size 1 and keeps the config's dynamic
    batching; a preferred batch size above 1 then makes that candidate "illegal", which ends the
    search there (it reports only the unchanged config)."""
    names = ModelNames.of(model)
    for composing in (names.preprocess, names.classifier):
        path = repository / composing / "config.pbtxt"
        if not path.is_file():
            raise SystemExit(f"{path} is missing: export a cpu repository (--target cpu) to {repository}")
        config = text_format.Parse(path.read_text(), mc.ModelConfig())
        if any(size > 1 for size in config.dynamic_batching.preferred_batch_size):
            raise SystemExit(
                f"{path} sets preferred_batch_size {list(config.dynamic_batching.preferred_batch_size)}; "
                "Model Analyzer's quick search calls every max_batch_size below it illegal and stops. "
                "Export with --preferred-batch-size 0 for the search"
            )


def model_analyzer_config(args: argparse.Namespace, clips: Path, ports: tuple[int, ...]) -> dict[str, Any]:
    """The profile config: the ensemble under load from `clips`, both composing models on the CPU."""
    output = args.output.resolve()
    names = ModelNames.of(args.model)
    http, grpc, metrics = ports
    return {
        "model_repository": str(args.repository.resolve()),
        "output_model_repository_path": str(output / "output_repository"),
        "override_output_model_repository": True,
        "checkpoint_directory": str(output / "checkpoints"),
        "export_path": str(output / "results"),
        "triton_launch_mode": "local",
        "triton_server_path": str(SERVER_WRAPPER),
        "triton_output_path": str(output / "tritonserver.log"),
        "triton_http_endpoint": f"localhost:{http}",
        "triton_grpc_endpoint": f"localhost:{grpc}",
        "triton_metrics_url": f"http://localhost:{metrics}/metrics",
        "client_protocol": "grpc",
        "run_config_search_mode": "quick",
        "run_config_search_max_instance_count": args.max_instances,
        "run_config_search_max_model_batch_size": args.max_batch_size,
        "run_config_search_max_concurrency": args.max_concurrency,
        "cpu_only_composing_models": [names.preprocess, names.classifier],
        "profile_models": {
            names.ensemble: {
                "perf_analyzer_flags": {"input-data": str(clips), "stability-percentage": args.stability},
                "constraints": {"perf_latency_p99": {"max": args.latency_budget_ms}},
            }
        },
    }


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    check_repository(args.repository, args.model)
    analyzer = args.model_analyzer.resolve()
    if not analyzer.is_file():
        raise SystemExit(f"{analyzer} not found: make model-analyzer installs it into its own venv (.venv-ma)")
    args.output.mkdir(parents=True, exist_ok=True)
    clips = _write_clips(args)
    config = args.output / "config.yaml"
    config.write_text(json.dumps(model_analyzer_config(args, clips.resolve(), free_ports(3)), indent=2))
    # perf_analyzer, which Model Analyzer runs from PATH, links libcudart from its venv's CUDA runtime wheel.
    ma_bin = analyzer.parent
    cuda = next((ma_bin.parent / "lib").glob("python3*/site-packages/nvidia/cuda_runtime/lib"), None)
    env = {**os.environ, "PATH": os.pathsep.join([str(ma_bin), os.environ.get("PATH", "")])}
    if cuda is not None:
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(cuda), os.environ.get("LD_LIBRARY_PATH")) if p)
    env["EMOTION_VENV"] = str(Path(sys.executable).parent.parent)  # the wrapper's tritonserver is this venv's
    command = [str(analyzer), "profile", "-f", str(config)]
    print(f"$ {' '.join(command)}", flush=True)
    return subprocess.run(command, env=env, check=False).returncode


def _write_clips(args: argparse.Namespace) -> Path:
    """The ensemble's request data, read with the SDK's audio code and checked against the limits its
    config states (the server is not up yet: Model Analyzer starts it)."""
    text = (args.repository / args.model / "config.pbtxt").read_text()
    config = json_format.MessageToDict(text_format.Parse(text, mc.ModelConfig()), preserving_proto_field_name=True)
    info = parse_model_info(config, model_name=args.model)
    clips = load_perf_clips(collect_audio_files(args.samples), info)
    return write_perf_data(args.output / "clips.json", [clip.samples for clip in clips], info.audio_input)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-analyzer", type=Path, default=Path(".venv-ma/bin/model-analyzer"))
    parser.add_argument("--repository", type=Path, default=Path("model_repository"), help="a cpu export")
    parser.add_argument("--model", default=ENSEMBLE_MODEL, help="the model to profile (default: %(default)s)")
    parser.add_argument("--samples", type=Path, nargs="+", default=[Path("samples")], help="audio files or folders")
    parser.add_argument("--output", type=Path, default=Path("model-analyzer"), help="config, logs and reports")
    parser.add_argument("--max-instances", type=int, default=2, help="instances per composing model (default: 2)")
    parser.add_argument("--max-batch-size", type=int, default=8, help="largest max_batch_size tried (default: 8)")
    parser.add_argument("--max-concurrency", type=int, default=8, help="highest concurrency tried (default: 8)")
    parser.add_argument(
        "--stability", type=float, default=10, help="perf_analyzer's allowed spread of 3 windows, percent (default: 10)"
    )
    parser.add_argument("--latency-budget-ms", type=int, default=500, help="p99 constraint (default: 500)")
    return parser


if __name__ == "__main__":
    sys.exit(main())
