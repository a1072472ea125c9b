"""Chaos harness (see harness.py); `python -m tests.chaos --cycles N --seed S` from the repository root."""
