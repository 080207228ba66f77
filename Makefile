# The two commands a newcomer needs: `make demo` and `make test`. Both install what is missing.
.PHONY: install demo test test-unit lint bench accuracy clean

VENV := .venv
BIN := $(VENV)/bin

install:
	@bash scripts/install.sh

demo: install
	$(BIN)/soundmon up --simulate 4

test: install
	$(BIN)/python -m pytest

test-unit: install
	$(BIN)/python -m pytest tests/unit

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache

# throughput, latency and scale vs the transport ceiling and the naive design (docs/performance.md)
bench: install
	$(BIN)/soundmon bench
	$(BIN)/python bench/dsp.py
	$(BIN)/python bench/recording.py

accuracy: install
	$(BIN)/python scripts/accuracy_table.py
