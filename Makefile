# The README's two commands. Each sets up .venv inside the checkout on first use.
.PHONY: demo test test-slow lint bench setup

setup:
	@bash tools/bootstrap.sh

demo: setup
	.venv/bin/edgedyn demo

# one pytest worker per core, at most 4 (pytest-xdist, work-stealing); `pytest tests/x.py` runs serially
test: setup
	.venv/bin/python -m pytest -q -n auto --maxprocesses 4 --dist worksteal

test-slow: setup
	.venv/bin/python -m pytest -q -m slow -n auto --maxprocesses 4 --dist worksteal

# ruff and mypy on edgedyn/ (settings in pyproject.toml); CI runs it before the tests.
lint: setup
	.venv/bin/ruff check edgedyn
	.venv/bin/mypy
