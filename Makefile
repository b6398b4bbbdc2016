# Two commands a user needs (see README): `make demo` and `make test`. Both set up first
# (idempotent, fast when already done).
.PHONY: setup demo test bench-quick
PY := .venv/bin/python

setup:
	@bash scripts/setup.sh

demo: setup
	@$(PY) -m napari_textdiff.cli demo $(ARGS)

test: setup
	@bash scripts/run_tests.sh $(ARGS)

bench-quick: setup
	@.venv/bin/napari-textdiff benchmark speed --quick --out runs/bench-speed
