"""The CLI's text output, command by command, kept in tests/expected/cli/*.txt and compared here.

One fixture, deterministic: the embedded chdb and a SQLite catalog as conftest's `make_settings` sets them up,
two tables (`trades`: 2,500 rows at fixed times from 2025-01-01T00:00:00Z, one a second, TTL 50 years;
`quiet`: empty), seven commits of at most 400 rows. The commands run in process (`main([...])`, stdout not
a terminal: plain text, no progress bar) from the fixture's folder, in the order listed in CASES; each file
holds the command line, stdout, stderr and the exit code. What differs from run to run is replaced by
`normalise` (below). `OFFLOAD_UPDATE_EXPECTED=1` rewrites the files (and removes those no case writes).

Covered: `--help` of the program and of every command and sub-action, run (a cycle, and one with a failing
table), status, watermark show, watermark set (preview), adopt (preview of a move), verify, maintain
reconcile|compact|expire|orphans|all (previews), view --print, doctor --engine-only, a config error, a
usage error.
Not covered, their text needs a Prefect stack or the clock: deploy, worker, metrics, up, down, ps, trigger,
schedule, recover and doctor without --engine-only (Prefect API, processes, schedules); demo (it inserts
trades up to now, so its rows and watermarks follow the clock); watermark set / adopt / maintain with --yes
and view without --print (they change the fixture; tests/test_cli.py, test_identity.py and test_maintenance.py
check what they do).
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import click

from conftest import TRADES_DDL, clickhouse, trades_table
from iceberg_offload.cli import app
from iceberg_offload.cli import main as cli

EXPECTED = Path(__file__).parent / "expected" / "cli"
START_MS = 1735689600000  # 2025-01-01T00:00:00Z
VOLATILE = {
    "seconds": "<s>",
    "lag": "<lag>",
    "last commit": "<time>",
    "ttl headroom": "<headroom>",
    "snapshot": "<snapshot>",
    "run": "<run>",
}
"""Grid columns whose values are times of the run or random ids: each cell becomes the placeholder."""
PATTERNS = [
    (re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"), "<uuid>"),
    (re.compile(r"\bcli-[0-9a-f]{8,}\b"), "cli-<run>"),
    (re.compile(r" in [0-9.]+s\b"), " in <s>s"),
    (re.compile(r"\blag \d+ min\b"), "lag <n> min"),
    (re.compile(r"\bTTL headroom [0-9.]+ h\b"), "TTL headroom <n> h"),
]
"""Free text: table and metadata-file UUIDs, run ids, a cycle's duration, doctor's lag and TTL headroom."""
DASHES = re.compile(r"^-+(  -+)*$")


def normalise(text: str, tmp: Path) -> str:
    """The test folder becomes <tmp>; in each plain grid (a header line, a line of dashes per column, then
    the rows: lines with blanks between the columns) the VOLATILE columns' cells become placeholders and the
    grid is aligned again, as `Grid` aligns it (<tmp> changed widths too); then PATTERNS apply to the text."""
    lines = text.replace(str(tmp), "<tmp>").split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        if i + 1 < len(lines) and DASHES.match(lines[i + 1]):
            spans = [(m.start(), m.end()) for m in re.finditer(r"-+", lines[i + 1])]
            rows = [lines[i]]
            j = i + 2
            while (
                j < len(lines)
                and lines[j]
                and all(lines[j][e:s].strip() == "" for (_, e), (s, _) in zip(spans, spans[1:], strict=False))
            ):
                rows.append(lines[j])
                j += 1
            out += _realign(rows, spans)
            i = j
        else:
            out.append(lines[i])
            i += 1
    text = "\n".join(out)
    for pattern, repl in PATTERNS:
        text = pattern.sub(repl, text)
    return text


def _realign(rows: list[str], spans: list[tuple[int, int]]) -> list[str]:
    cut = [
        [row[s : (spans[k + 1][0] if k + 1 < len(spans) else None)].strip() for k, (s, _) in enumerate(spans)]
        for row in rows
    ]
    headers, cells = cut[0], cut[1:]
    cells = [[VOLATILE.get(h, c) if c != "-" else c for h, c in zip(headers, r, strict=True)] for r in cells]
    widths = [max(len(h), *(len(r[k]) for r in cells)) if cells else len(h) for k, h in enumerate(headers)]
    line = lambda r: "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip()  # noqa: E731
    return [line(headers), line(["-" * w for w in widths]), *map(line, cells)]


def help_paths(group: click.Group, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = [path]
    for name, cmd in group.commands.items():
        if cmd.hidden:
            continue
        out += help_paths(cmd, (*path, name)) if isinstance(cmd, click.Group) else [(*path, name)]
    return out


CASES: list[tuple[str, list[str]]] = [
    ("run", ["run"]),
    ("status", ["status"]),
    ("watermark-show", ["watermark", "show"]),
    ("watermark-set-preview", ["watermark", "set", "-t", "trades", "--to", "2025-01-01T00:30:00Z"]),
    ("verify", ["verify"]),
    ("maintain-reconcile", ["maintain", "reconcile"]),
    ("maintain-compact", ["maintain", "compact"]),
    ("maintain-expire", ["maintain", "expire"]),
    ("maintain-orphans", ["maintain", "orphans"]),
    ("maintain-all", ["maintain", "all", "-t", "trades"]),
    ("view-print", ["view", "--print", "-t", "trades"]),
    ("adopt-preview", ["adopt", "-t", "trades", "-c", "moved.toml"]),
    ("doctor-engine-only", ["doctor", "--engine-only"]),
    ("run-failed-table", ["run", "-c", "absent.toml"]),
    ("error-config", ["status", "-c", "bad.toml"]),
    ("error-usage", ["status", "--tabel", "trades"]),
]


def fixture(make_settings, tmp_path: Path) -> None:
    s = make_settings([trades_table(), trades_table("quiet")], max_rows_per_commit=400)
    with clickhouse(s) as ch:
        ch.command(TRADES_DDL.format(name="trades") + " TTL toDateTime(ts) + INTERVAL 50 YEAR")
        ch.command(TRADES_DDL.format(name="quiet"))
        ch.command(TRADES_DDL.format(name="trades_v2"))
        for name in ("trades", "trades_v2"):
            ch.command(
                f"INSERT INTO k2.{name} SELECT fromUnixTimestamp64Milli(toInt64({START_MS} + number * 1000)), "
                f"number, ['BTC', 'ETH'][1 + number % 2], toDecimal64(number / 100, 8) FROM numbers(2500)"
            )
    text = Path(s.path).read_text()
    (tmp_path / "moved.toml").write_text(
        text.replace('source = "trades"\n', 'source = "trades_v2"\ntarget = "trades"\n', 1)
    )
    (tmp_path / "absent.toml").write_text(
        text.split("[[tables]]")[0] + '[[tables]]\nsource = "absent"\ntimestamp_column = "ts"\n'
    )
    (tmp_path / "bad.toml").write_text(text.replace("[offload]\n", "[offload]\nsettle_secs = 5\n"))


def run_case(argv: list[str], capsys, tmp_path: Path) -> str:
    code = cli.main(argv)
    out = capsys.readouterr()
    text = f"$ iceberg-offload {shlex.join(argv)}\n{out.out}"
    if out.err:
        text += f"[stderr]\n{out.err}"
    return normalise(text + f"[exit {code}]\n", tmp_path)


def test_text_output_matches_the_expected_files(make_settings, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")  # help is wrapped at min(COLUMNS, 80) - 2
    for key in [k for k in os.environ if k.startswith("OFFLOAD__")]:
        monkeypatch.delenv(key)
    fixture(make_settings, tmp_path)
    monkeypatch.chdir(tmp_path)
    got = {
        ("help-" + "-".join(p)).rstrip("-"): run_case([*p, "--help"], capsys, tmp_path) for p in help_paths(app.root)
    }
    for name, argv in CASES:
        got[name] = run_case(argv, capsys, tmp_path)
    if os.environ.get("OFFLOAD_UPDATE_EXPECTED") == "1":
        EXPECTED.mkdir(parents=True, exist_ok=True)
        for stale in set(EXPECTED.glob("*.txt")) - {EXPECTED / f"{n}.txt" for n in got}:
            stale.unlink()
        for name, text in got.items():
            (EXPECTED / f"{name}.txt").write_text(text)
        return
    stale = sorted(p.stem for p in EXPECTED.glob("*.txt") if p.stem not in got)
    assert not stale, f"expected files no case writes: {stale} (OFFLOAD_UPDATE_EXPECTED=1 removes them)"
    differ = []
    for name, text in got.items():
        path = EXPECTED / f"{name}.txt"
        want = path.read_text() if path.exists() else "(missing)"
        if text != want:
            differ.append(f"--- {path.name} expected\n{want}\n+++ got\n{text}")
    assert not differ, "text output differs (OFFLOAD_UPDATE_EXPECTED=1 rewrites the files):\n" + "\n".join(differ)


def test_normalise_keeps_grids_aligned():
    tmp = Path("/tmp/x")
    text = (
        "table  run                   seconds\n-----  --------------------  -------\n"
        "a      cli-0123456789abcdef  12.5\nb      cli-fedcba9876543210  0.1\n"
        "preview: nothing changed; add --yes to apply\n\ncycle cli-0123456789abcdef: success, 5 rows in 3.2s /tmp/x"
    )
    assert normalise(text, tmp) == (
        "table  run    seconds\n-----  -----  -------\na      <run>  <s>\nb      <run>  <s>\n"
        "preview: nothing changed; add --yes to apply\n\n"
        "cycle cli-<run>: success, 5 rows in <s>s <tmp>"
    )
