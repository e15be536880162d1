# Two entry points for a fresh machine: `make demo` and `make test`. Everything else is a step of those.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
APT_PACKAGES := espeak-ng sox libb64-0d libsndfile1 openssl libjemalloc2 \
	cmake ninja-build g++ rapidjson-dev googletest patchelf python3-dev
# Sources of Triton's libtorch backend: a shared archive beside the checkout where there is one (CI has no
# GitHub), else `build-backend` clones the r24.10 branches from GitHub.
SOURCES_ARCHIVE ?= ../shared/vendor/triton-r24.10-sources.tar.gz
LIBTORCH_BACKEND := $(VENV)/share/emotion-build/backends/pytorch/libtriton_pytorch.so
REPOSITORY ?= model_repository
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test lint typecheck setup system-deps libtorch-backend repository serve loadtest model-analyzer loadtest-live bench bench-quick bench-live bench-tune bench-precision bench-variants bench-drift bench-overhead clean

demo: setup  ## export (real weights when reachable), serve on CPU, classify samples/, stop
	$(BIN)/python -m emotion_build demo --model-repository $(REPOSITORY) --samples samples

test: setup libtorch-backend lint typecheck  ## install everything, then the whole suite against a real tritonserver
	$(BIN)/pytest

lint: setup
	$(BIN)/ruff check build client tests benchmarks
	$(BIN)/ruff format --check build client tests benchmarks

typecheck: setup
	$(BIN)/mypy build/emotion_build client/emotion_client benchmarks tests

setup: system-deps $(BIN)/.installed

system-deps:  ## Debian packages: speech for tests and samples, libb64 for perf_analyzer, libsndfile, openssl for test certificates, jemalloc for tritonserver, the libtorch backend's build tools
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages: $$missing"; \
		$(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

$(BIN)/.installed: requirements.txt build/pyproject.toml client/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

libtorch-backend: setup $(LIBTORCH_BACKEND)  ## Triton's libtorch backend (r24.10) built against the venv's torch, about a minute

$(LIBTORCH_BACKEND): $(BIN)/.installed
	$(BIN)/python -m emotion_build build-backend --sources $(SOURCES_ARCHIVE)

repository: setup  ## the GPU repository for NVIDIA's container (set MODEL=dir or RANDOM_INIT=base)
	$(BIN)/python -m emotion_build export --target gpu --output $(REPOSITORY) \
		$(if $(MODEL),--model $(MODEL)) $(if $(RANDOM_INIT),--random-init $(RANDOM_INIT))

serve: setup
	$(BIN)/python -m emotion_build serve --model-repository $(REPOSITORY)

# make loadtest: perf_analyzer on SAMPLES (speech, any rate) against a running server at URL, each
# measurement window DURATION_MS long, stable within STABILITY % on the average latency (PERCENTILE=99: on p99);
# prints perf_analyzer's report, writes LOADTEST_DIR/perf.csv and loadtest.png.
URL ?= localhost:8001
MODEL_NAME ?= emotion
CONCURRENCY ?= 1:8:1
DURATION_MS ?= 5000
SAMPLES ?= samples
STABILITY ?= 10
MAX_TRIALS ?= 10
PERCENTILE ?= -1
LOADTEST_DIR ?= loadtest

loadtest: setup  ## perf_analyzer's concurrency sweep on real speech against a running server (docs/loadtest.md)
	$(BIN)/python benchmarks/loadtest.py --url $(URL) --concurrency $(CONCURRENCY) --duration-ms $(DURATION_MS) \
		--samples $(SAMPLES) --stability $(STABILITY) --max-trials $(MAX_TRIALS) --percentile $(PERCENTILE) \
		--output $(LOADTEST_DIR) --model $(MODEL_NAME)

# make loadtest-live: perf_analyzer's sequence mode against the live-stream model: each of SAMPLES' files one
# stream in CHUNK_S chunks over gRPC streaming, CONCURRENCY concurrent streams (docs/loadtest.md).
CHUNK_S ?= 0.1
LIVE_CONCURRENCY ?= 1:8:1

loadtest-live: setup  ## perf_analyzer on live streams (sequences of chunks) against a running server
	mkdir -p $(LOADTEST_DIR)
	$(BIN)/emotion-client perf-data $(SAMPLES) --stream --chunk-s $(CHUNK_S) -o $(LOADTEST_DIR)/streams.json \
		--url $(URL) --model $(MODEL_NAME)
	stream=$$($(BIN)/emotion-client labels --json --url $(URL) --model $(MODEL_NAME) \
		| $(BIN)/python -c 'import json, sys; print(json.load(sys.stdin)["stream_model"] or "stream")') && \
	LD_LIBRARY_PATH=$$($(BIN)/python -c 'import nvidia.cuda_runtime as c; print(c.__path__[0])')/lib \
		$(BIN)/perf_analyzer -m $$stream -i grpc -u $(URL) --streaming --input-data $(LOADTEST_DIR)/streams.json \
		--concurrency-range $(LIVE_CONCURRENCY) --measurement-interval $(DURATION_MS) -f $(LOADTEST_DIR)/streams.csv

# make model-analyzer: NVIDIA's Model Analyzer, in its own venv, on REPOSITORY (a cpu export with
# --preferred-batch-size 0) under SAMPLES' speech; it starts its own tritonservers. Reports in MA_DIR.
MA_VENV ?= .venv-ma
MA_DIR ?= model-analyzer

$(MA_VENV)/bin/.installed: benchmarks/analyzer/requirements.txt
	$(PYTHON) -m venv $(MA_VENV)
	$(MA_VENV)/bin/pip install --quiet --disable-pip-version-check -r $<
	touch $@

model-analyzer: setup $(MA_VENV)/bin/.installed  ## Model Analyzer's quick search of instance counts and batch sizes, ensemble profiled (docs/loadtest.md)
	$(BIN)/python benchmarks/analyzer/profile_ensemble.py --model-analyzer $(MA_VENV)/bin/model-analyzer \
		--repository $(REPOSITORY) --model $(MODEL_NAME) --samples $(SAMPLES) --output $(MA_DIR) $(MA_ARGS)

bench: setup  ## HF pipeline vs in-process TorchScript vs served ensemble -> docs/benchmarks.md + .png (~30 min)
	$(BIN)/python benchmarks/throughput.py $(BENCH_ARGS)

bench-quick: setup  ## the same with short windows and fewer points (~14 min)
	$(BIN)/python benchmarks/throughput.py --quick $(BENCH_ARGS)

bench-tune: setup  ## dynamic-batching settings measured one server at a time (~14 min)
	$(BIN)/python benchmarks/throughput.py --tune --workloads 1s mixed --concurrency 1 8 $(BENCH_ARGS)

bench-precision: setup  ## the int8 export's precision gate on 100 speech clips against fp32 eager (~5 min)
	$(BIN)/python benchmarks/precision_parity.py $(BENCH_ARGS)

bench-variants: setup  ## forms of the exported module (bf16/fp32, sdpa, frozen, conv forms) timed in turn, with their precision (~20 min)
	$(BIN)/python benchmarks/module_variants.py $(BENCH_ARGS)

bench-overhead: setup libtorch-backend  ## what the serving path costs per request with no model behind it: a GPU server's CPU side (~7 min)
	$(BIN)/python benchmarks/serving_overhead.py $(BENCH_ARGS)

bench-live: setup  ## live streams: update lag at one stream and at capacity, the most streams served in real time (~10 min)
	$(BIN)/python benchmarks/live.py $(BENCH_ARGS)

bench-drift: setup  ## how far HF's padded batch moves each clip's answer, next to ours
	$(BIN)/python benchmarks/batch_drift.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
	find $(REPOSITORY) -mindepth 1 -maxdepth 1 ! -name README.md -exec rm -rf {} +
