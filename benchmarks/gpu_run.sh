#!/usr/bin/env bash
# Everything a lent GPU is needed for, in one go (about 8 minutes of device time on an H200):
#
#   1. the module's forms timed in turn on the device (fp32, fp16 and bf16; sdpa attention, frozen,
#      the other convolution form, AOTInductor fp16; the plain HF model), each with its |Δprob| on speech;
#   2. the precision gate of `export --dtype fp16` and `--dtype bf16` on 40 speech clips;
#   3. the served gpu-python ensemble (the pip tritonserver, the Python runner on KIND_GPU) at
#      c=32/64/128 next to the HF pipeline and the in-process module (throughput.py --device cuda,
#      perf_analyzer windows sized from the in-process measurement).
#
# Each step writes its section of a copy of docs/benchmarks.md in OUT; copy it back over
# docs/benchmarks.md once the run is done. The device machine reaches no registry and has no
# espeak-ng, so `prepare` (run here first) puts what it lacks into .gpu/ (ignored by git): the
# speech clips and the wheels, split in two folders because one call carries at most 64 MiB.
#
#   bash benchmarks/gpu_run.sh prepare                  # here: .gpu/server (55 MB), .gpu/rest (~26 MB)
#   device run, carry [".gpu/server"]: bash benchmarks/gpu_run.sh install-server
#   device run right after (the machine stays warm 30 s), carry [".gpu/rest"]:
#                                       bash benchmarks/gpu_run.sh run --out $OUT
#   bash benchmarks/gpu_run.sh run --device cpu --random-init tiny --quick --out /tmp/g   # rehearsal here
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SITE=/tmp/emotion-gpu-site
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python

prepare() {
    local py=${PYTHON:-.venv/bin/python}
    rm -rf .gpu && mkdir -p .gpu/server .gpu/rest/wheels .gpu/rest/speech .gpu/rest/debs
    grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
    local download=(python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp
        --platform manylinux_2_35_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
    "${download[@]}" -d .gpu/server nvidia-pytriton==0.7.0
    # perf_analyzer and the gRPC client; libcudart.so.12 for perf_analyzer; the speech readers.
    "${download[@]}" -d .gpu/rest/wheels tritonclient==2.51.0 nvidia-cuda-runtime-cu12==12.9.79 \
        soundfile==0.14.0 soxr==1.1.0
    (cd .gpu/rest/debs && apt-get download libb64-0d)
    "$py" - <<'EOF'
from pathlib import Path

import numpy as np
import soundfile

from emotion_build.export.speech import synthesise

for index, clip in enumerate(synthesise(40, sample_rate=16000, seed=11)):
    soundfile.write(Path(".gpu/rest/speech") / f"{index:02d}.wav", clip, 16000, subtype="PCM_16")
EOF
    du -sh .gpu/server .gpu/rest
}

install_server() {
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .gpu/server/*.whl
}

run() {
    local device=cuda size=base out="" quick=0
    while [ $# -gt 0 ]; do
        case $1 in
            --device) device=$2; shift 2 ;;
            --random-init) size=$2; shift 2 ;;
            --out) out=$2; shift 2 ;;
            --quick) quick=1; shift ;;
            *) echo "unknown option $1" >&2; exit 2 ;;
        esac
    done
    [ -n "$out" ] || { echo "--out DIR is required" >&2; exit 2; }
    mkdir -p "$out"
    if [ -d .gpu/rest/wheels ]; then  # on the device: what prepare carried
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
            .gpu/rest/wheels/*.whl
        for deb in .gpu/rest/debs/*.deb; do dpkg -x "$deb" "$SITE/debs"; done
        export LD_LIBRARY_PATH="$SITE/debs/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}"
    fi
    export PYTHONPATH="$SITE:$ROOT/build:$ROOT/client:$ROOT/benchmarks:${PYTHONPATH:-}"
    local speech=() report="$out/benchmarks.md"
    [ -d .gpu/rest/speech ] && speech=(--speech .gpu/rest/speech)
    cp docs/benchmarks.md "$report"
    local half=fp16 point=4 clips=40 concurrency=(32 64 128) workloads=(1s 4s 10s) aoti=(--aoti)
    if [ "$device" = cpu ]; then half=bf16; concurrency=(1 4); fi
    if [ $quick = 1 ]; then point=0.5; clips=8; workloads=(1s); aoti=(); fi
    { nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true
      "$PY" -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'
    } | tee "$out/machine.txt"

    step() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$out/steps.log"; }
    step "1/3 module variants"
    "$PY" benchmarks/module_variants.py --device "$device" --dtype "$half" --random-init "$size" \
        --point-s "$point" --clips "$clips" "${speech[@]}" --output "$report" "${aoti[@]}" 2>&1 | tee "$out/variants.log"
    step "2/3 precision gates"
    for precision in fp16 bf16; do
        [ "$device" = cpu ] && [ $precision = fp16 ] && continue  # no fp16 arithmetic on this CPU
        "$PY" benchmarks/precision_parity.py --device "$device" --dtype $precision --random-init "$size" \
            --clips "$clips" "${speech[@]}" --output "$report" 2>&1 | tee "$out/precision-$precision.log" || true
    done
    step "3/3 served, in-process and HF"
    "$PY" benchmarks/throughput.py --device "$device" --dtype "$half" --random-init "$size" \
        --workloads "${workloads[@]}" --concurrency "${concurrency[@]}" --skip sdk latency-first \
        --point-s "$point" --rounds 0 --output "$report" --plot "$out/benchmarks-gpu.png" \
        --json "$out/throughput.json" 2>&1 | tee "$out/throughput.log"
    step "done: copy $report over docs/benchmarks.md"
}

case ${1:-} in
    prepare) prepare ;;
    install-server) install_server ;;
    run) shift; run "$@" ;;
    *) sed -n '2,22p' "$0"; exit 2 ;;
esac
