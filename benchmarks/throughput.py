"""Speed of the served system next to the Hugging Face pipeline and the in-process TorchScript limit.

One run on one machine, full-size wav2vec2-base (random weights unless --model: speed does not
depend on weight values), espeak-ng speech of 1 s, 4 s, 10 s and mixed lengths:

1. `pipeline("audio-classification")` as the model card uses it (one clip per call), and with
   `batch_size`, in a process of its own with malloc's defaults, as a user's service runs it;
2. the exported `model.pt` in this process (normalisation + ragged batch + TorchScript) at batch
   sizes 1, 2, 4, 8, with malloc set up as the served cpu runner sets it (keeping freed memory):
   the best of them is the limit of this hardware;
3. the served ensemble (preprocess -> classifier) through gRPC: `perf_analyzer` over a concurrency
   sweep, and the SDK's `AsyncEmotionClient.classify_many`.

The ratios and the latency added at concurrency 1 are then measured alternately, since the same
point drifts by up to a third within minutes on a shared VM (benchmarks/interleaved.py): rounds of
each system's best setting and the one beside it in turn, and pairs of one clip in-process then
the same clip served.

It writes the tables into docs/benchmarks.md (between its `throughput` markers) and a plot of
throughput and p99 latency against concurrency to docs/benchmarks.png.

    make bench                                       # the full run (about 30 min on 2 CPU cores)
    python benchmarks/throughput.py --quick          # about 14 min: fewer points, shorter windows
    python benchmarks/throughput.py --tune           # dynamic-batching settings, one server each
    # a GPU machine: the pip tritonserver serves a gpu-python export (fp16) it makes itself
    python benchmarks/throughput.py --device cuda
    # or the libtorch classifier in NVIDIA's container: export --target gpu, serve it (docker/), then
    python benchmarks/throughput.py --device cuda --repository model_repository --server-url localhost:8001

On CUDA the tables go between the `throughput-gpu` markers and the plot to docs/benchmarks-gpu.png.
"""

# The bench itself lives in benchmarks/speed/, one concern a module (speed/__init__.py maps them).

from __future__ import annotations

import sys
from collections.abc import Sequence

from speed import cli


def main(argv: Sequence[str] | None = None) -> int:
    return cli.main(argv, description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
