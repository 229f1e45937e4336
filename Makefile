# RaftWallet. Quick start: `make run` and `make test`; both set everything up themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: setup run test test-fast lint check bench-core proto clean

# Create the venv and install the project with its dev extras; redone when pyproject changes.
# The first install fetches many packages (grpcio-tools, matplotlib, schemathesis, ...) and
# takes a few minutes: pip's own lines show its progress (no --quiet on that step).
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@echo "make: installing raftwallet and its dev tools into $(VENV) (a first install takes a few minutes)"
	$(BIN)/python -m pip install -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP)

## run: the demonstration: starts the 3 nodes of cluster-configs/local-3node.toml in a temporary data dir, runs a few thousand transfers through the SDK, prints the summary that proves the books, stops the nodes (node/cli/demo.py; see README)
run: setup
	$(BIN)/python -m node.cli.demo

## test: the whole test suite on TEST_WORKERS processes (pytest-xdist, each module's tests on one process, in order); the property tests run again under a second hash seed
TEST_WORKERS ?= 2
test: setup
	PYTHONHASHSEED=0 $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile
	PYTHONHASHSEED=4242 $(BIN)/python -m pytest -q tests/test_ledger_properties.py tests/test_saga_properties.py

## test-fast: the inner loop: unit and property tests only, no node process (~30 s)
test-fast: setup
	$(BIN)/python -m pytest -q -m "not cluster"

## lint: ruff, mypy and lint-imports (the import rules in pyproject's [tool.importlinter]), all must be clean
lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

check: lint test

## bench-core: applies per second of the ledger core, writes bench/results/local/core_apply.json (RECORD=1: the committed bench/results/core_apply.json)
bench-core: setup
	$(BIN)/python -m bench.core_apply $(if $(RECORD),--record,)

.PHONY: bench bench-quick bench-replay bench-peers

## bench-replay: replay speed of an archive of 1,000,000 transfers, against the code of REPLAY_BASELINE in the same run; writes bench/results/local/replay.json (RECORD=1: bench/results/replay.json)
REPLAY_BASELINE ?= 198bb9c
bench-replay: setup
	$(BIN)/python -m bench.replay --baseline-rev $(REPLAY_BASELINE) $(if $(RECORD),--record,)

## bench: committed transfers/s of a local 3-node cluster: closed and open loop, intra/uniform/zipf mixes, the load generator's ceiling, scaling over 1/2/4/8 partitions (~15 min); writes bench/results/local/tps.json, tps-scaling.png, tps-latency.png (RECORD=1: the committed ones in bench/results/)
bench: setup
	$(BIN)/python -m bench.tps $(if $(RECORD),--record,)

## bench-quick: the same in under 2 minutes (1 run of 2 s, 2-point sweep, no scaling curve); writes bench/results/local/tps-quick.json, tps-quick-latency.png (RECORD=1: in bench/results/)
bench-quick: setup
	$(BIN)/python -m bench.tps --quick $(if $(RECORD),--record,)

## bench-peers: the same transfer workload against PostgreSQL (durable, then synchronous_commit=off) and a local 3-node cluster; writes bench/results/local/peers.json (RECORD=1: bench/results/peers.json)
bench-peers: setup
	$(BIN)/python -m bench.peers.run $(if $(RECORD),--record,)

.PHONY: chaos
DURATION ?= 600
SEED ?=
NETWORK ?= auto
## chaos: a seeded chaos run (faults + bank workload + checker), e.g. make chaos DURATION=600 SEED=8; see docs/reliability.md
chaos: setup
	$(BIN)/python -m tests.chaos.runner --duration-s $(DURATION) --network $(NETWORK) --nodes 3 --partitions 4 --faults all $(if $(SEED),--seed $(SEED),)

## proto: regenerate the checked-in Python modules after editing proto/**/*.proto
proto: setup
	$(BIN)/python -m proto.generate

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .import_linter_cache .hypothesis build *.egg-info
