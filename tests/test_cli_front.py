"""The command line's front end: where options may stand, short options, help with an example that parses,
--help without the engine's imports, rich tables that fit the terminal, the progress bar and the engine's
progress hooks behind it. The text of each command: test_cli_expected.py."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time

import click
import pytest

from conftest import TRADES_DDL, clickhouse, insert_trades, trades_table
from iceberg_offload import names
from iceberg_offload.cli import app
from iceberg_offload.cli import main as cli
from iceberg_offload.cli.output import Grid, render, terminal
from iceberg_offload.cli.progress import ProgressBar

HEAVY = {"pydantic", "pyarrow", "prefect", "pyiceberg", "chdb", "clickhouse_connect", "rich"}
"""Not for --help: the config model, the engine, the orchestrator, and rich (text output and bars only)."""
PROBE = """import runpy, sys
sys.argv = ["iceberg-offload", *sys.argv[1:]]
try:
    runpy.run_module("iceberg_offload.cli", run_name="__main__")
except SystemExit as exc:
    code = exc.code
finally:
    print("MODULES", sorted({m.split(".")[0] for m in sys.modules}), "CODE", code, file=sys.stderr)
"""


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["run", "--help"],
        ["watermark", "set", "--help"],
        ["maintain", "reconcile", "--help"],
        ["schedule", "pause", "--help"],
        ["doctor", "-h"],
        ["--version"],
    ],
)
def test_help_loads_none_of_the_engine(argv):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, env=env, timeout=60)
    line = next(ln for ln in done.stderr.splitlines() if ln.startswith("MODULES "))
    loaded = set(eval(line.split("MODULES ", 1)[1].rsplit(" CODE ", 1)[0]))
    assert line.endswith("CODE 0") and done.stdout, done.stderr
    assert not loaded & HEAVY, sorted(loaded & HEAVY)
    assert "iceberg_offload" in loaded and "click" in loaded  # the probe did run the program


NOT_BEFORE_FIRST_READ = {"pandas", "prefect", "rich"}
"""Not for `run --json` before its first ClickHouse read: pandas (pyiceberg's pyarrow module, through
pyarrow.dataset: the data files and compare need it, a plan does not), the orchestrator, text output."""
FIRST_READ_PROBE = """import importlib.machinery, os, runpy, sys


class Hook:  # at the first query a Source sends, say which modules are loaded, and stop
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name != "iceberg_offload.clickhouse.client":
            return None
        sys.meta_path.remove(Hook)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        run = spec.loader.exec_module

        def first_read(*args, **kwargs):
            print("MODULES", sorted({m.split(".")[0] for m in sys.modules}), file=sys.stderr, flush=True)
            os._exit(0)

        def exec_module(module):
            run(module)
            for attr in ("rows", "command", "_fetch_arrow"):
                setattr(module.Source, attr, first_read)

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, Hook)
sys.argv = ["iceberg-offload", *sys.argv[1:]]
runpy.run_module("iceberg_offload.cli", run_name="__main__")
"""


def test_run_reaches_its_first_clickhouse_read_without_pandas_or_prefect(make_settings):
    s = make_settings([trades_table()])
    with clickhouse(s) as ch:
        ch.command(TRADES_DDL.format(name="trades"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, "-c", FIRST_READ_PROBE, "-c", s.path, "run", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    line = next((ln for ln in done.stderr.splitlines() if ln.startswith("MODULES ")), None)
    assert done.returncode == 0 and line is not None, done.stderr
    loaded = set(eval(line.split("MODULES ", 1)[1]))
    assert {"iceberg_offload", "pyiceberg", "clickhouse_connect"} <= loaded  # the probe stopped at the read
    assert not loaded & NOT_BEFORE_FIRST_READ, sorted(loaded & NOT_BEFORE_FIRST_READ)


def has(args: dict, want: dict) -> bool:
    return {k: args.get(k, "<absent>") for k in want} == want


def parsed(*argv: str):
    invocation = cli.parse(list(argv))
    assert invocation is not None
    return invocation.func, vars(invocation.args)


def test_global_options_stand_before_or_after_the_command_and_the_innermost_wins():
    assert has(parsed("--config", "a.toml", "status")[1], {"config": "a.toml", "json": False, "table": None})
    assert has(parsed("status", "-c", "a.toml", "--json")[1], {"config": "a.toml", "json": True, "output": "json"})
    func, args = parsed("-o", "json", "watermark", "set", "-t", "x", "--to", "1", "-c", "b.toml")
    assert func == "cmd_watermark_set" and has(args, {"json": True, "config": "b.toml", "table": "x", "to": "1"})
    assert parsed("-c", "a", "watermark", "-c", "b", "show", "-c", "c")[1]["config"] == "c"
    assert parsed("-c", "a", "watermark", "-c", "b", "show")[1]["config"] == "b"
    assert parsed("--json", "run", "-o", "text")[1]["json"] is False
    assert parsed("-o", "text", "run", "--json")[1]["json"] is True
    assert has(parsed("run")[1], {"config": None, "json": False, "output": "text"})


def test_sub_actions_and_their_options_keep_their_meaning():
    func, args = parsed("maintain", "-t", "a", "reconcile", "-t", "b", "-y")
    assert func == "cmd_maintain" and has(args, {"step": "reconcile", "table": ["a", "b"], "yes": True, "values": None})
    assert has(parsed("maintain", "--yes", "--no-values", "all")[1], {"step": "all", "yes": True, "values": False})
    assert has(parsed("maintain", "compact")[1], {"table": None, "yes": False})
    assert has(parsed("schedule", "--deployment", "f/d", "pause")[1], {"action": "pause", "deployment": ["f/d"]})
    assert parsed("schedule", "show")[0] == "cmd_schedule" and parsed("schedule", "show")[1]["deployment"] is None
    func, args = parsed(
        "watermark", "set", "--table", "x", "--to", "5", "--seq", "7", "--yes", "--reoffload", "--future"
    )
    assert has(args, {"seq": 7, "yes": True, "reoffload": True, "future": True, "action": "set"})
    assert parsed("verify", "--values")[1]["values"] is True and parsed("verify")[1]["values"] is None
    assert has(parsed("trigger")[1], {"deployment": names.MAIN, "wait": False, "timeout": 600.0})
    assert has(parsed("recover", "-y", "--timeout", "5")[1], {"yes": True, "resume_schedule": False, "timeout": 5.0})
    assert parsed("up")[1]["timeout"] == 180.0 and has(parsed("worker", "--limit", "3")[1], {"limit": 3, "name": None})
    assert parsed("view", "--print")[1]["print_only"] is True
    assert parsed("doctor", "--engine-only")[1]["engine_only"] is True
    assert has(parsed("adopt", "-t", "x")[1], {"table": "x", "yes": False})
    assert parsed("_supervise")[0] == "cmd_supervise"
    for bad in (["maintain"], ["maintain", "fix"], ["adopt"], ["run", "-y"], ["up", "--timeout", "soon"]):
        with pytest.raises(click.UsageError):
            cli.parse(bad)


def commands(group: click.Group, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], click.Command]]:
    out = []
    for name, cmd in group.commands.items():
        out.append(((*path, name), cmd))
        if isinstance(cmd, click.Group):
            out += commands(cmd, (*path, name))
    return out


def test_every_command_has_one_example_that_parses(capsys):
    seen = 0
    for path, cmd in commands(app.root):
        if cmd.hidden:
            continue
        assert cli.main([*path, "--help"]) == 0
        text = capsys.readouterr().out
        examples = [ln.strip() for ln in text.split("Example:\n", 1)[1].splitlines() if ln.strip()]
        assert text.count("Example:") == 1 and len(examples) == 1, (path, text)
        words = examples[0].split()
        assert words[0] == "iceberg-offload" and tuple(words[1 : 1 + len(path)]) == path, examples
        assert cli.parse(words[1:]) is not None, examples
        seen += 1
    assert seen >= 25


def test_main_returns_the_exit_code_of_help_version_and_usage_errors(capsys):
    assert cli.main(["--help"]) == 0 and "Example:" in capsys.readouterr().out
    assert cli.main(["--version"]) == 0 and capsys.readouterr().out.startswith("iceberg-offload ")
    assert cli.main(["status", "--tabel", "x"]) == 2 and "No such option '--tabel'" in capsys.readouterr().err
    assert cli.main([]) == 2


def test_json_after_a_sub_action_prints_json(make_settings, capsys):
    s = make_settings([trades_table()])
    with clickhouse(s) as ch:
        ch.command(TRADES_DDL.format(name="trades"))
    assert cli.main(["-c", s.path, "watermark", "show", "-o", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"ok": True, "tables": [{"table": "trades", "commits": []}]}


def test_tables_fit_the_terminal_or_become_one_block_per_row():
    g = Grid(
        ["table", "watermark", "lag", "last commit", "what"],
        [
            [
                "trades",
                "2025-01-01T00:41:39Z",
                "3s",
                "2026-12-02T05:16:12.897Z",
                "1 hours compared; missing rows in 0, duplicates in 0; repaired 0 (+0 rows, -0 duplicates)",
            ],
            ["quiet", None, None, None, "[[tables]] is text, not markup"],
        ],
    )
    for width in (40, 80, 100, 200):
        out = io.StringIO()
        render([g, "a line after the table"], terminal(out, width=width))
        lines = out.getvalue().splitlines()
        assert max(len(ln) for ln in lines) <= width, (width, out.getvalue())
        text = out.getvalue()
        assert "2025-01-01T00:41:39Z" in text and "[[tables]]" in text and "a line after the table" in text
        as_table = "watermark" in lines[0]
        assert as_table == (width >= 100), (width, text)  # whole timestamps need 100 columns here
        if not as_table:
            assert lines[0].strip() == "trades" and lines[1].split() == ["watermark", "2025-01-01T00:41:39Z"]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_shows_rows_speed_and_time_left_on_a_terminal_only():
    tty = Terminal()
    with ProgressBar(True, tty) as bar:
        for done in (0, 200_000, 600_000, 1_000_000):
            bar("trades", done, 1_000_000)
            time.sleep(0.05)
        bar("quiet", 0, 0)  # nothing to do: no bar
    text = tty.getvalue()
    assert "trades" in text and "1,000,000/1,000,000 rows" in text and "rows/s" in text and "0:00:00" in text
    assert "quiet" not in text
    for stream, enabled in ((io.StringIO(), True), (Terminal(), False)):  # a pipe; --json
        with ProgressBar(enabled, stream) as bar:
            bar("trades", 10, 100)
        assert stream.getvalue() == ""


def test_long_work_reports_progress(make_settings):
    from iceberg_offload.engine.compare import verify
    from iceberg_offload.engine.offload import run_cycle
    from iceberg_offload.maintenance.daily import maintain

    s = make_settings([trades_table()], max_rows_per_commit=100)
    with clickhouse(s) as ch:
        ch.command(TRADES_DDL.format(name="trades"))
        insert_trades(ch, "trades", 1735689600000, 600)
    heard: list[tuple[str, int, int]] = []
    report = lambda *a: heard.append(a)  # noqa: E731
    run_cycle(s, progress=report)
    assert heard[0] == ("trades", 0, 600) and heard[-1] == ("trades", 600, 600) and len(heard) == 7
    heard.clear()
    verify(s, progress=report)
    assert heard == [("trades", 600, 600)]
    heard.clear()
    maintain(s, steps=("reconcile", "compact"), apply=True, progress=report)
    assert heard == [("trades reconcile", 600, 600), ("trades compact", 600, 600)]
