# xmtf: the two commands a new machine needs are `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install demo test bench lint format clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch is pinned (torch==2.13.0, CPU build) through the `trainer` extra.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[scorer,trainer,loadtest,dev]'
	touch $(STAMP)

install: $(STAMP)

## demo: the whole loop (init -> scorer -> simulated users over HTTP -> Redis -> consume -> swap)
demo: install
	$(BIN)/python -m trainer.demo

## production-check: the production loop over 4 rounds on held-out world 102 (scorer -> Redis ->
## consume -> CURRENT), evaluated on held-out users before and after (results/rounds/; ~15 min)
.PHONY: production-check
production-check: install
	$(BIN)/python -m trainer.rounds --out results/rounds

## test: the test suite (starts its own throwaway redis-server instances)
test: install
	$(BIN)/python -m pytest -q

## bench: scorer latency/throughput next to the echo, parse and ONNX floors (results/bench.md);
## cluster logging; what experiments, shadow scoring and explain cost (results/bench-rollout.md)
bench: install
	$(BIN)/python -m loadtest.bench
	$(BIN)/python -m loadtest.cluster_bench
	$(BIN)/python -m loadtest.bench_rollout

## bench-metrics: what /metrics costs the rank path, in-process vs multiprocess (several workers)
.PHONY: bench-metrics
bench-metrics: install
	$(BIN)/python -m loadtest.metrics_micro

## bench-train: streaming trainer: ingest events/s and TSH updates/s next to floors, the
## 256-session scenario, a --time-budget run, memory (results/bench-train.md; ~10 minutes)
.PHONY: bench-train
bench-train: install
	$(BIN)/python -m loadtest.bench_train

## bench-sim: user simulator throughput (user-requests per second)
.PHONY: bench-sim
bench-sim: install
	$(BIN)/python -m loadtest.simbench

## paper: the study (results/worlds.md protocol) on the held-out worlds 101 and 102 at d = 0 and
## d = 1 (and the KuaiRand population at both), then the dose-response table next to
## results/headroom.json (run `make headroom` first)
PAPER_JOBS ?= 2
PAPER_TRIALS ?= 10
# the KuaiRand population study runs too when the real user features are there (not in a clone)
PAPER_KUAIRAND_DIR ?= $(or $(XMTF_KUAIRAND_DIR),$(wildcard ../shared/data/kuairand-pure))
COMMA := ,
SPACE := $(subst ,, )
PAPER_RUN = $(BIN)/xmtf-train paper --trials $(PAPER_TRIALS) --jobs $(PAPER_JOBS)
PAPER_SYNTHETIC = paper-d0 paper-d0.25 paper-d0.5 paper-d1 paper-w102-d0 paper-w102-d1 paper-d1-1e6 \
	paper-d0-1e6
PAPER_KUAIRAND = $(if $(PAPER_KUAIRAND_DIR),paper-kuairand-d0 paper-kuairand-d1 \
	paper-kuairand-d0-1e6)
PAPER_DIRS = $(subst $(SPACE),$(COMMA),$(addprefix results/,$(PAPER_SYNTHETIC) $(PAPER_KUAIRAND)))
.PHONY: paper
paper: install
	$(PAPER_RUN) --out results/paper-d0 --dose 0
	$(PAPER_RUN) --out results/paper-d0.25 --dose 0.25
	$(PAPER_RUN) --out results/paper-d0.5 --dose 0.5
	$(PAPER_RUN) --out results/paper-d1 --dose 1
	$(PAPER_RUN) --out results/paper-w102-d0 --dose 0 --world-seed 102
	$(PAPER_RUN) --out results/paper-w102-d1 --dose 1 --world-seed 102
	# the budget curve to 10^6 requests: xMTF's start, its ES learner and the best formula
	$(PAPER_RUN) --out results/paper-d1-1e6 --dose 1 --budget 1e5,3e5,1e6 \
		--methods xmtf_init,cem1_cal,xmtf_es,xmtf_es_warm
	# and at d = 0: the warm learner against its start when its planned budget is 10^6
	$(PAPER_RUN) --out results/paper-d0-1e6 --dose 0 --budget 1e5,3e5,1e6 \
		--methods xmtf_init,cem1_cal,xmtf_es_warm
	$(if $(PAPER_KUAIRAND_DIR),$(PAPER_RUN) --out results/paper-kuairand-d0 --dose 0 \
		--data-dir $(PAPER_KUAIRAND_DIR))
	$(if $(PAPER_KUAIRAND_DIR),$(PAPER_RUN) --out results/paper-kuairand-d1 --dose 1 \
		--data-dir $(PAPER_KUAIRAND_DIR))
	$(if $(PAPER_KUAIRAND_DIR),$(PAPER_RUN) --out results/paper-kuairand-d0-1e6 --dose 0 \
		--budget 1e5,3e5,1e6 --methods xmtf_init,cem1_cal,xmtf_es_warm \
		--data-dir $(PAPER_KUAIRAND_DIR))
	$(BIN)/xmtf-train family --headroom $(HEADROOM_FILES) --out results --papers $(PAPER_DIRS)

## rollout-stats: experiment statistics on the simulator (A/A false positives, guard false
## rollbacks, rollback delay of a bad arm, power; CUPED when the KuaiRand-Pure user features are
## in $XMTF_KUAIRAND_DIR or ../shared/data/kuairand-pure) -> results/rollout-stats.md
KUAIRAND_DIR ?= $(or $(XMTF_KUAIRAND_DIR),$(wildcard ../shared/data/kuairand-pure))
.PHONY: rollout-stats
rollout-stats: install
	$(BIN)/python -m trainer.experiment.stats_check --out results/rollout-stats.md \
		$(if $(KUAIRAND_DIR),--kuairand $(KUAIRAND_DIR))

## headroom: personalisation headroom of the world family, no learner -> results/headroom.md
## (world 101 at every d), results/headroom-w102-d*/ and results/headroom-kuairand-d*/
HEADROOM_JOBS ?= 1
HEADROOM_RUN = $(BIN)/xmtf-train headroom --jobs $(HEADROOM_JOBS)
HEADROOM_KUAIRAND = $(if $(PAPER_KUAIRAND_DIR),kuairand-d0 kuairand-d1)
HEADROOM_FILES = $(subst $(SPACE),$(COMMA),results/headroom.json $(foreach h,w102-d0 w102-d1 \
	$(HEADROOM_KUAIRAND),results/headroom-$(h)/headroom.json))
.PHONY: headroom
headroom: install
	$(HEADROOM_RUN) --out results
	$(HEADROOM_RUN) --out results/headroom-w102-d0 --world-seed 102 --doses 0
	$(HEADROOM_RUN) --out results/headroom-w102-d1 --world-seed 102 --doses 1
	$(if $(PAPER_KUAIRAND_DIR),$(HEADROOM_RUN) --out results/headroom-kuairand-d0 --doses 0 \
		--data-dir $(PAPER_KUAIRAND_DIR))
	$(if $(PAPER_KUAIRAND_DIR),$(HEADROOM_RUN) --out results/headroom-kuairand-d1 --doses 1 \
		--data-dir $(PAPER_KUAIRAND_DIR))

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy scorer shared trainer

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) demo-run .pytest_cache .mypy_cache .ruff_cache *.egg-info
