"""Full-size parity of every served family: random-init weights of each published architecture,
exported for the cpu target (fp32, native convs) exactly as `python -m emotion_build export` does,
then the saved TorchScript against eager Hugging Face, each clip alone and all in one ragged batch.

The tests check every family and layout at tiny size; this checks that nothing breaks at the real
widths and depths (768 or 1024 channels, 12 or 24 layers, WavLM's 320 relative-position buckets,
data2vec-audio's five positional conv layers), where sums are longer and rounding larger.

    python benchmarks/family_parity.py                         # the four base sizes, about 5 min on 2 cores
    python benchmarks/family_parity.py --sizes base large      # and the large (stable-layer-norm) ones
    python benchmarks/family_parity.py --conv-form matmul      # the GPU targets' convolutions, on this CPU
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from emotion_build.export.parity import PARITY_TOLERANCE, check_parity
from emotion_build.export.pipeline import describe, export
from emotion_build.export.tracing import trace
from emotion_build.model.families import FAMILIES, FAMILY_NAMES, FamilyName
from emotion_build.model.loading import random_model
from emotion_build.repository.description import BatchingSettings

CHECK_LENGTHS = (1600, 16000, 55_000, 88_000, 128_000)
"""0.1 s to 8 s, as `export` draws them: the shortest the server accepts up to its check's longest."""


@dataclasses.dataclass(frozen=True)
class Row:
    family: str
    size: str
    parameters: int
    alone: float
    batched: float
    seconds: float
    """Wall time of the export (trace, save, reload, the parity check, the repository) or the check alone."""


def measure(family: FamilyName, size: str, conv_form: str, output: Path) -> Row:
    loaded = random_model(size, family=family)  # type: ignore[arg-type]
    description = describe(loaded, batching=BatchingSettings(), min_duration_s=0.1, max_duration_s=30.0)
    start = time.perf_counter()
    if conv_form == "native":
        result = export(loaded, output, "cpu", description, dtype="fp32", check_lengths=CHECK_LENGTHS)
        report = result.parity
    else:
        report = check_parity(
            trace(loaded, description.sample_rate, conv_form="matmul"), loaded, description, CHECK_LENGTHS
        )
    seconds = time.perf_counter() - start
    parameters = sum(p.numel() for p in loaded.model.parameters())
    return Row(family, size, parameters, report.max_abs_logit_diff, report.batched_max_abs_logit_diff, seconds)


def table(rows: Sequence[Row], conv_form: str) -> str:
    lines = [
        f"| family (class) | size | parameters | max abs Δlogit alone | in one ragged batch | "
        f"{'export' if conv_form == 'native' else 'check'} time |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row.family} ({FAMILIES[row.family].class_name}) | {row.size} | {row.parameters / 1e6:.0f} M | "  # type: ignore[index]
            f"{row.alone:.2e} | {row.batched:.2e} | {row.seconds:.0f} s |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", nargs="+", choices=FAMILY_NAMES, default=list(FAMILY_NAMES))
    parser.add_argument("--sizes", nargs="+", choices=("base", "large"), default=["base"])
    parser.add_argument("--conv-form", choices=("native", "matmul"), default="native")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="family-parity-") as scratch:
        for size in args.sizes:
            for family in args.families:
                row = measure(family, size, args.conv_form, Path(scratch) / f"{family}-{size}")
                print(
                    f"{family} {size}: alone {row.alone:.2e}, batched {row.batched:.2e}, {row.seconds:.0f} s",
                    flush=True,
                )
                rows.append(row)
    print(f"\nlengths {', '.join(f'{n / 16000:g} s' for n in CHECK_LENGTHS)}; limit {PARITY_TOLERANCE:g}\n")
    print(table(rows, args.conv_form))
    return 0 if all(max(r.alone, r.batched) <= PARITY_TOLERANCE for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
