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

bench: install
	$(BIN)/python bench/throughput.py --devices 4 --frames 2500
	$(BIN)/python bench/dsp.py

accuracy: install
	$(BIN)/python scripts/accuracy_table.py
