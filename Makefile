# The README's two commands. Each sets up .venv inside the checkout on first use.
.PHONY: demo test test-slow bench setup

setup:
	@bash tools/bootstrap.sh

demo: setup
	.venv/bin/edgedyn demo

test: setup
	.venv/bin/python -m pytest -q

test-slow: setup
	.venv/bin/python -m pytest -q -m slow
