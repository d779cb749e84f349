# Developer entry points. Tools run from the project virtualenv; override with
# e.g. `make test PY=python3` to use another interpreter that has the dev extras.

PY ?= .venv/bin/python
PYTHON3 ?= python3
VENV ?= .venv
PYTEST_ARGS ?=
PROTO_DIR := proto
PROTO_SRC := $(wildcard $(PROTO_DIR)/lvs_events/pb/v1/*.proto)
# protoc finds its plugins (protoc-gen-mypy, protoc-gen-mypy_grpc) on PATH.
PY_BIN_DIR := $(abspath $(dir $(PY)))

.PHONY: venv proto lint typecheck test demo

venv:
	$(PYTHON3) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -e '.[dev]'

proto:
	@test -n "$(PROTO_SRC)" || { echo "no .proto files under $(PROTO_DIR)/lvs_events/pb/v1" >&2; exit 1; }
	PATH="$(PY_BIN_DIR):$$PATH" $(PY) -m grpc_tools.protoc -I $(PROTO_DIR) \
		--python_out=. --grpc_python_out=. --mypy_out=. --mypy_grpc_out=. \
		$(PROTO_SRC)

lint:
	$(PY) -m ruff check .

typecheck:
	$(PY) -m mypy

# pytest exits 5 when nothing was collected: a bad PYTEST_ARGS (a typo in a path or -k) is a
# failure, never a green run. No target here selects nothing on purpose.
test: lint typecheck
	@echo "$(PY) -m pytest -q $(PYTEST_ARGS)"
	@$(PY) -m pytest -q $(PYTEST_ARGS)

demo:
	bash deploy/demo.sh
