# Two commands do everything on a fresh machine:  `make demo`  and  `make test`.
# Torch: an already-installed torch is reused (the venv sees system site-packages only when torch
# is importable there); otherwise $(TORCH) is installed. GPU users: `make demo TORCH="torch"` or
# install their CUDA build first.
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
BIN    := $(VENV)/bin

.PHONY: demo test lint clean

demo: $(VENV)/.installed
	$(BIN)/customgrad fit

test: $(VENV)/.installed
	$(BIN)/python -m pytest

lint: $(VENV)/.installed
	$(BIN)/ruff check src tests examples benchmarks && $(BIN)/ruff format --check src tests examples benchmarks

$(VENV)/.installed: pyproject.toml
	@if $(PYTHON) -c "import torch" 2>/dev/null; then \
		echo "reusing the installed torch"; $(PYTHON) -m venv --system-site-packages $(VENV); \
	else \
		$(PYTHON) -m venv $(VENV) && $(BIN)/python -m pip install -q "$(TORCH)"; \
	fi
	$(BIN)/python -m pip install -q -e ".[dev]"
	@touch $@

clean:
	rm -rf $(VENV)
