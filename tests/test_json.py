"""The `--json` payload models (payloads*.py): docs/json.md is generated from them, the check that the suite
runs on every printed payload (OFFLOAD_CHECK_PAYLOADS=1, set in conftest) rejects what drifts, every command
has a model, a bad command line under --json is an error payload, and times have one spelling."""

from __future__ import annotations

import io
import json
import os
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Literal, TypedDict

import pytest

from iceberg_offload import payload_docs
from iceberg_offload.cli import app
from iceberg_offload.cli import main as cli
from iceberg_offload.errors import PayloadMismatch
from iceberg_offload.payload_docs import check
from iceberg_offload.payloads import ErrorPayload, Watermark
from iceberg_offload.times import utc, utc_ms, utc_s

DOC = Path(__file__).parent.parent / "docs" / "json.md"


def test_docs_json_is_generated_from_the_models():
    text = payload_docs.markdown()
    if os.environ.get("OFFLOAD_UPDATE_EXPECTED") == "1":
        DOC.write_text(text)
    assert DOC.read_text() == text, "docs/json.md is stale: OFFLOAD_UPDATE_EXPECTED=1 pytest tests/test_json.py"


class Inner(TypedDict):
    n: int


class Model(TypedDict):
    ok: bool
    kind: Literal["a", "b"]
    at: str | None
    ratio: float
    items: list[Inner]


GOOD = {"ok": True, "kind": "a", "at": None, "ratio": 1, "items": [{"n": 3}]}


@pytest.mark.parametrize(
    ("change", "said"),
    [
        ({"ok": None}, "$.ok"),
        ({"kind": "c"}, "'c' is not one of"),
        ({"ratio": "1"}, "not a number"),
        ({"items": [{"n": True}]}, "$.items[0].n"),  # a bool is not an int
        ({"items": [{"n": 1, "m": 2}]}, "unexpected ['m']"),
        ({"extra": 1}, "unexpected ['extra']"),
    ],
)
def test_check_rejects_a_payload_that_drifts(change, said):
    check(GOOD, Model)
    with pytest.raises(PayloadMismatch, match=None) as err:
        check(GOOD | change, Model)
    assert said in str(err.value)
    missing = {k: v for k, v in GOOD.items() if k != "at"}
    with pytest.raises(PayloadMismatch, match=r"missing \['at'\]"):
        check(missing, Model)  # a key that does not apply is null, never absent


def test_every_command_has_a_payload_model():
    documented = {w for cmd, _ in payload_docs.COMMANDS for w in cmd.split(" ")[0].split("|")}
    no_json = {"worker", "metrics", "supervise", "_supervise"}  # long-running processes: they print no payload
    commands = set(app.root.commands) - no_json
    assert commands <= documented, f"commands without a payload model: {sorted(commands - documented)}"


@pytest.mark.parametrize(
    "argv",
    [
        ["status", "--tabel", "x", "--json"],
        ["--json", "nosuchcommand"],
        ["-o", "json", "watermark", "set", "-t", "x"],  # --to is missing
    ],
)
def test_a_bad_command_line_under_json_is_a_usage_error_payload(argv):
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = cli.main(argv)
    payload = json.loads(out.getvalue())
    check(payload, ErrorPayload)
    assert code == 2 and payload["error"]["type"] == "usage" and "--help" in payload["error"]["fix"], payload
    assert err.getvalue() == ""


def test_a_bad_command_line_in_text_keeps_the_usage_message():
    err = io.StringIO()
    with redirect_stdout(io.StringIO()), redirect_stderr(err):
        code = cli.main(["status", "--tabel", "x"])
    assert code == 2 and "Usage: iceberg-offload status" in err.getvalue()


def test_times_have_one_spelling():
    assert utc(1_796_217_041_000_000_000) == "2026-12-02T13:10:41Z"
    assert utc(1_796_217_041_336_000_000) == "2026-12-02T13:10:41.336Z"
    assert utc(1_796_217_041_000_000_001) == "2026-12-02T13:10:41.000000001Z"  # exact: nothing rounded
    assert utc(-1) == "1969-12-31T23:59:59.999999999Z"
    assert utc_ms(1_796_217_041_336) == utc(1_796_217_041_336_000_000)
    assert utc_s(1_796_217_041.5) == "2026-12-02T13:10:41.5Z"
    check({"ts": utc(5), "ts_ns": 5, "seq": None}, Watermark)
