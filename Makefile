# The README's two commands: `make serve` and `make test`. Each sets up what it needs.
# GPU machines: make serve EXTRAS=gpu,quantize   (vLLM 0.24.0 + torch 2.11.0 instead of the CPU torch)
PYTHON ?= python3
VENV ?= .venv
EXTRAS ?= cpu,quantize,dev
comma := ,
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))
DEMO := checkpoints/qwen2-small/config.json checkpoints/llama-small/config.json checkpoints/qwen2.5-vl-tiny/config.json
# INGRESS=haproxy (default): Ray Serve's throughput mode with its HAProxy ingress, which
# forwards HTTP straight to the router replica (no proxy actor hop, gRPC between deployments).
# On an H200 it reached 1.01x bare `vllm serve`'s throughput at concurrency 128, against 0.69x
# for INGRESS=proxy, Ray Serve's own HTTP proxy actor (docs/benchmarks.md). The variables must
# be set where the Ray cluster starts: `ray start` or, as here, `serve run`.
INGRESS ?= haproxy
SERVE_ENV_proxy :=
SERVE_ENV_haproxy := RAY_SERVE_THROUGHPUT_OPTIMIZED=1 RAY_SERVE_ENABLE_HA_PROXY=1 RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH=67108864 RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S=70 RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S=5
SERVE_ENV := $(SERVE_ENV_$(INGRESS))

.PHONY: setup serve test lint preflight demo-checkpoints clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[$(EXTRAS)]'
	touch $@

demo-checkpoints: $(DEMO)

checkpoints/qwen2-small/config.json: | $(STAMP)
	$(PY) scripts/make_checkpoint.py --arch qwen2 --size small --out checkpoints/qwen2-small
checkpoints/llama-small/config.json: | $(STAMP)
	$(PY) scripts/make_checkpoint.py --arch llama --size small --seed 1 --out checkpoints/llama-small
checkpoints/qwen2.5-vl-tiny/config.json: | $(STAMP)
	$(PY) scripts/make_vl_checkpoint.py --size tiny --out checkpoints/qwen2.5-vl-tiny

serve: setup demo-checkpoints
	$(PY) -m serve_app preflight models.yaml
	$(SERVE_ENV) PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(PY) -m serve_app run models.yaml

preflight: setup demo-checkpoints
	$(PY) -m serve_app preflight models.yaml

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: setup lint
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VENV)/bin/pytest -q

clean:
	rm -rf $(VENV) checkpoints .pytest_cache .ruff_cache
