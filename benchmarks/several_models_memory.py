"""What each further model costs a server's memory: PSS per process, one full-size checkpoint served
alone and then two served together (docs/serving.md, "Several models").

    python benchmarks/several_models_memory.py                       # wav2vec2 base, then + WavLM base
    python benchmarks/several_models_memory.py --dtype fp32 --second hubert

Both are `--random-init base` exports of the default precision (`--dtype auto`); each server is read
idle after every model has answered `--warm` rounds of four concurrent 10 s clips (the largest batch
the readings should include), so the classifier's kept memory is in the figures.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from process_memory import Resident, processes, snapshot, total

from emotion_build.model.names import FAMILY_NAMES
from emotion_build.server.launcher import TritonServer
from emotion_client import EmotionClient

RATE = 16000


def export(output: Path, family: str, name: str, dtype: str) -> None:
    command = [sys.executable, "-m", "emotion_build", "export", "--random-init", "base", "--family", family]
    command += ["--name", name, "--target", "cpu", "--dtype", dtype, "--output", str(output)]
    print(f"exporting {family} base as '{name}' ({dtype})", flush=True)
    subprocess.run(command, check=True)


def warm_and_read(repository: Path, names: list[str], rounds: int) -> dict[str, Resident]:
    clip = (0.1 * np.random.default_rng(0).standard_normal(10 * RATE)).astype(np.float32)
    with TritonServer(repository) as server:
        url = server.endpoints.grpc_url
        for name in names:
            with EmotionClient(url, model_name=name, timeout_s=300) as client, ThreadPoolExecutor(4) as pool:
                for _ in range(rounds):
                    list(pool.map(lambda _: client.classify(clip, RATE), range(4)))
        return snapshot(processes(server))


def table(title: str, memory: dict[str, Resident]) -> str:
    rows = [f"| {name} | {m.rss_kib / 1024:.0f} | {m.pss_kib / 1024:.0f} |" for name, m in sorted(memory.items())]
    whole = total(memory)
    rows.append(f"| **total** | {whole.rss_kib / 1024:.0f} | **{whole.pss_kib / 1024:.0f}** |")
    return "\n".join([f"\n{title}\n", "| process | RSS MiB | PSS MiB |", "|---|---|---|", *rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--second", default="wavlm", choices=FAMILY_NAMES, help="the second model's family")
    parser.add_argument("--dtype", default="auto", help="export precision of both (default: auto)")
    parser.add_argument("--warm", type=int, default=2, help="rounds of four 10 s clips per model before reading")
    parser.add_argument("--scratch", type=Path, help="keep the repositories here (default: a temporary directory)")
    args = parser.parse_args()
    scratch = args.scratch or Path(tempfile.mkdtemp(prefix="several-models-"))
    one, two = scratch / "one", scratch / "two"
    if not one.exists():
        export(one, "wav2vec2", "emotion", args.dtype)
    if not two.exists():
        shutil.copytree(one, two)
        export(two, args.second, args.second, args.dtype)
    alone = warm_and_read(one, ["emotion"], args.warm)
    together = warm_and_read(two, ["emotion", args.second], args.warm)
    print(table("wav2vec2 base alone", alone))
    print(table(f"wav2vec2 base and {args.second} base", together))
    added = (total(together).pss_kib - total(alone).pss_kib) / 1024
    print(f"\nthe second model adds {added:.0f} MiB PSS")
    if args.scratch is None:
        shutil.rmtree(scratch)


if __name__ == "__main__":
    main()
