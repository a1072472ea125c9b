# Shorthands for ./dev (which creates .venv when it is missing).
.PHONY: demo test bench
demo:
	./dev demo
test:
	./dev test
bench:
	./dev test --co -q >/dev/null && .venv/bin/python bench/throughput.py
