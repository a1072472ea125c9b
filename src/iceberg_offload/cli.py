"""Operator commands. Thin: parse, call one function, print text or --json, exit 0 / 1 (a table failed) / 2
(bad config or input). Every command takes --config and --json."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .config import DEFAULT_CONFIG, Settings, load
from .errors import OffloadError
from .source import limit_malloc_arenas

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _common() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--config", metavar="PATH", default=None,
                   help=f"config file (default ./{DEFAULT_CONFIG}; none = embedded default)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    return p


def _tables_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--table", action="append", metavar="NAME", help="only this table (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = argparse.ArgumentParser(prog="iceberg-offload", parents=[common],
                                     description="Copy ClickHouse rows into Iceberg before the TTL deletes them.")
    parser.add_argument("--version", action="version", version=f"iceberg-offload {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("run", parents=[common], help="one offload cycle over all (or --table) tables")
    _tables_arg(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("status", parents=[common], help="watermark, lag, hot/cold rows and TTL headroom per table")
    _tables_arg(p)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("watermark", parents=[common], help="the watermark history from Iceberg snapshots")
    wsub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    w = wsub.add_parser("show", parents=[common], help="every commit that carried a watermark, newest first")
    _tables_arg(w)
    w.set_defaults(func=cmd_watermark_show)
    w = wsub.add_parser("set", parents=[common], help="preview (or --yes: commit) a new watermark for one table")
    w.add_argument("--table", required=True, metavar="NAME")
    w.add_argument("--to", required=True, metavar="TIME", help="ISO 8601 (UTC) or epoch seconds")
    w.add_argument("--seq", type=int, default=None, help="sequence value at that time (default: none)")
    w.add_argument("--yes", action="store_true", help="commit it (default: only show the effect)")
    w.add_argument("--reoffload", action="store_true", help="allow moving back: rows are offloaded again")
    w.set_defaults(func=cmd_watermark_set)

    p = sub.add_parser("verify", parents=[common], help="hot vs cold per hour: rows missing or duplicated in cold")
    _tables_arg(p)
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("demo", parents=[common], help="seed the embedded ClickHouse with market data and offload it")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("doctor", parents=[common], help="diagnose like the runbook: processes, server, workers, "
                                                        "schedule, runs, metrics, tables; exit 1 on any fail")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("recover", parents=[common], help="what the runbook would do, in its order; --yes does it, "
                                                         "runs the offload and checks again")
    p.add_argument("--yes", action="store_true", help="do it (default: only show the plan)")
    p.add_argument("--resume-schedule", action="store_true", help="also resume a paused schedule")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the stack and the run")
    p.set_defaults(func=cmd_recover)

    p = sub.add_parser("deploy", parents=[common],
                       help="create or update the work pool, deployments and per-table limits (idempotent)")
    p.set_defaults(func=cmd_deploy)

    p = sub.add_parser("worker", parents=[common], help="a Prefect process worker on pool iceberg-offload "
                                                        "plus the metrics endpoint (port 8000)")
    p.add_argument("--name", help="worker name (default HOST-PID)")
    p.add_argument("--limit", type=int, help="flow runs at once (default [prefect] worker_limit; 0 = no limit)")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("metrics", parents=[common], help="serve the Prometheus endpoint alone ([metrics] host:port)")
    p.set_defaults(func=cmd_metrics)

    p = sub.add_parser("up", parents=[common], help="start Prefect server, worker and deployments natively; "
                                                    "returns when the API is ready and a worker is ONLINE")
    p.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for readiness (default 180)")
    p.set_defaults(func=cmd_up)
    p = sub.add_parser("down", parents=[common], help="stop the native stack that `up` started")
    p.set_defaults(func=cmd_down)
    p = sub.add_parser("ps", parents=[common], help="the native stack's processes, their logs and the URLs")
    p.set_defaults(func=cmd_ps)
    p = sub.add_parser("_supervise", parents=[common])
    p.set_defaults(func=cmd_supervise)

    p = sub.add_parser("trigger", parents=[common], help="start a run of a deployment now (default: the offload)")
    p.add_argument("--deployment", default="iceberg-offload-main/iceberg-offload-15min", metavar="FLOW/DEPLOYMENT")
    p.add_argument("--wait", action="store_true", help="wait until the run is final; exit 1 unless COMPLETED")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait with --wait (default 600)")
    p.set_defaults(func=cmd_trigger)

    p = sub.add_parser("schedule", parents=[common], help="show, pause or resume the deployments' schedules")
    p.add_argument("action", choices=["show", "pause", "resume"])
    p.add_argument("--deployment", action="append", metavar="FLOW/DEPLOYMENT",
                   help="default: iceberg-offload-main/iceberg-offload-15min and iceberg-maintenance/"
                        "iceberg-maintenance-daily")
    p.set_defaults(func=cmd_schedule)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    limit_malloc_arenas()
    try:
        return int(args.func(args))
    except OffloadError as exc:
        _emit_error(args, exc)
        return EXIT_USAGE if not exc.transient and exc.kind in ("config", "source_error") else EXIT_FAILED
    except KeyboardInterrupt:
        return 130


def _emit_error(args: argparse.Namespace, exc: OffloadError) -> None:
    if getattr(args, "json", False):
        print(json.dumps({"ok": False, "error": exc.as_dict()}, indent=2))
    else:
        print(f"error: {exc}", file=sys.stderr)


def _settings(args: argparse.Namespace) -> Settings:
    return load(args.config)


def _print(args: argparse.Namespace, data: Any, text: Callable[[], str]) -> None:
    print(json.dumps(data, indent=2, default=str) if args.json else text())


def _grid(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [[("-" if v is None else str(v)) for v in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = lambda r: "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip()  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, cells)])


class _Bar:
    """A progress line on stderr for a terminal; silent otherwise."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr.isatty()

    def __call__(self, table: str, done: int, total: int) -> None:
        if not self.enabled or total <= 0:
            return
        width = 30
        filled = int(width * min(done, total) / total)
        sys.stderr.write(f"\r{table:<28} [{'#' * filled}{'.' * (width - filled)}] {done:>10,}/{total:,} rows")
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()


# -- commands -------------------------------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    from .offload import run_cycle

    result = run_cycle(_settings(args), args.table, progress=_Bar(not args.json))
    _print(args, result.as_dict(), lambda: _run_text(result.as_dict()))
    return EXIT_OK if result.status == "success" else EXIT_FAILED


def _run_text(data: dict[str, Any]) -> str:
    rows = []
    for t in data["tables"]:
        wm = (t["watermark_after"] or {}).get("ts")
        rows.append([t["table"], t["layer"], t["status"], f"{t['rows']:,}", t["commits"], wm, t["duration_seconds"]])
    out = [_grid(["table", "layer", "status", "rows", "commits", "watermark", "seconds"], rows)]
    for t in data["tables"]:
        if t["error"]:
            out.append(f"\n{t['table']}: {t['error']['message']}\n  fix: {t['error']['fix']}")
    out.append(f"\ncycle {data['run_id']}: {data['status']}, {data['rows']:,} rows in {data['duration_seconds']}s")
    return "\n".join(out)


def cmd_status(args: argparse.Namespace) -> int:
    from .status import status

    result = [s.as_dict() for s in status(_settings(args), args.table)]
    _print(args, {"tables": result}, lambda: _status_text(result))
    return EXIT_FAILED if any(s["error"] for s in result) else EXIT_OK


def _status_text(tables: list[dict[str, Any]]) -> str:
    rows = []
    for s in tables:
        wm = (s["watermark"] or {}).get("ts")
        head = s["ttl_headroom_seconds"]
        rows.append([s["table"], wm, _dur(s["lag_seconds"]), f"{s['cold_rows']:,}", s["last_commit_at"],
                     None if s["hot_rows"] is None else f"{s['hot_rows']:,}", s["oldest_hot"],
                     s["pending_rows"], s["ttl"], _dur(head)])
    out = [_grid(["table", "watermark", "lag", "cold rows", "last commit", "hot rows", "oldest hot", "pending",
                  "ttl", "ttl headroom"], rows)]
    for s in tables:
        if s["error"]:
            out.append(f"\n{s['table']}: {s['error']['message']}\n  fix: {s['error']['fix']}")
    return "\n".join(out)


def _dur(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    sign, s = ("-" if seconds < 0 else ""), abs(seconds)
    if s < 120:
        return f"{sign}{s:.0f}s"
    if s < 7200:
        return f"{sign}{s / 60:.0f}m"
    if s < 172800:
        return f"{sign}{s / 3600:.1f}h"
    return f"{sign}{s / 86400:.1f}d"


def cmd_watermark_show(args: argparse.Namespace) -> int:
    from .status import watermark_history

    hist = watermark_history(_settings(args), args.table)

    def text() -> str:
        parts = []
        for table, commits in hist.items():
            rows = [[c["snapshot_id"], (c["watermark"] or {}).get("ts"), (c["watermark"] or {}).get("seq"),
                     c["rows"], c["run_id"]] for c in commits]
            parts.append(f"{table}\n" + (_grid(["snapshot", "watermark", "seq", "rows", "run"], rows)
                                         if rows else "  no watermark yet: nothing offloaded"))
        return "\n\n".join(parts)

    _print(args, {"tables": hist}, text)
    return EXIT_OK


def cmd_watermark_set(args: argparse.Namespace) -> int:
    from .status import parse_time, set_watermark

    data = set_watermark(_settings(args), args.table, parse_time(args.to), args.seq, args.yes, args.reoffload)

    def text() -> str:
        cur = (data["current"] or {}).get("ts", "none")
        head = f"{data['table']}: watermark {cur} -> {data['new']['ts']} ({data['direction']}): {data['effect']}"
        if data["applied"]:
            return head + "\ncommitted; `iceberg-offload watermark show` lists it"
        if data["direction"] == "back":
            return head + "\nnot applied: add --yes --reoffload only if those rows were removed from Iceberg"
        return head + "\nnot applied: add --yes to commit it"

    _print(args, data, text)
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    from .reconcile import verify

    results = verify(_settings(args), args.table)
    ok = all(r.ok for r in results)
    data = {"ok": ok, "tables": [r.as_dict() for r in results]}

    def text() -> str:
        rows = [[r.table, "ok" if r.ok else "BAD", f"{r.hot_rows:,}", f"{r.cold_rows:,}", r.missing, r.duplicates,
                 r.buckets_checked, ", ".join(r.buckets_bad[:3]) + (" ..." if len(r.buckets_bad) > 3 else "")]
                for r in results]
        out = [_grid(["table", "result", "hot rows", "cold rows", "missing", "duplicates", "buckets", "bad buckets"],
                     rows)]
        out += [f"\n{r.table}: {r.error['message']}\n  fix: {r.error['fix']}" for r in results if r.error]
        if not ok:
            out.append("\nrows missing from cold are late arrivals behind the watermark or a lost commit; "
                       "see docs/runbooks/watermark-recovery.md")
        return "\n".join(out)

    _print(args, data, text)
    return EXIT_OK if ok else EXIT_FAILED


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import seed
    from .offload import run_cycle
    from .status import status

    path = Path(args.config or DEFAULT_CONFIG)
    settings = load(args.config) if path.exists() else load(None, env={})
    written, inserted = seed(settings, path)
    settings = load(str(path))
    cycle = run_cycle(settings, progress=_Bar(not args.json)).as_dict()
    states = {s.table: s for s in status(settings)}
    tables = [{"table": t["table"], "rows_this_run": t["rows"], "cold_rows": states[t["table"]].cold_rows,
               "watermark": (t["watermark_after"] or {}).get("ts"),
               "pending_rows": states[t["table"]].pending_rows, "status": t["status"]} for t in cycle["tables"]]
    data = {"config_written": written, "config": str(path.resolve()), "inserted": inserted, "cycle": cycle,
            "tables": tables}

    def text() -> str:
        head = (f"wrote {path} (the embedded default with ten demo tables)\n" if written else "")
        head += f"inserted {sum(inserted.values()):,} new hot rows into chdb at {settings.source.dsn}\n\n"
        rows = [[t["table"], t["status"], f"{t['rows_this_run']:,}", f"{t['cold_rows']:,}", t["watermark"],
                 t["pending_rows"]] for t in tables]
        body = _grid(["table", "status", "offloaded now", "in iceberg", "watermark", "waiting (settle/open)"], rows)
        tail = (f"\n\ncycle {cycle['status']}: {cycle['rows']:,} rows in {cycle['duration_seconds']}s. "
                f"Run `iceberg-offload demo` again to add and offload a new slice; "
                f"`iceberg-offload verify` compares hot and cold.")
        return head + body + tail

    _print(args, data, text)
    return EXIT_OK if cycle["status"] == "success" else EXIT_FAILED



# -- orchestration --------------------------------------------------------------------------------------
def _prefect_settings(args: argparse.Namespace) -> Settings:
    from .config import apply_prefect_env

    settings = _settings(args)
    apply_prefect_env(settings)
    return settings


def cmd_deploy(args: argparse.Namespace) -> int:
    settings = _prefect_settings(args)
    from .deployments import deploy

    report = deploy(settings).as_dict()

    def text() -> str:
        lines = [f"work pool iceberg-offload: {report['work_pool']['iceberg-offload']}"]
        lines += [f"deployment {k}: {v}" for k, v in report["deployments"].items()]
        lines += [f"limit {k} (1 in flight): {v}" for k, v in report["limits"].items()]
        lines += [f"note: {n}" for n in report["notes"]]
        lines.append(f"trigger a run: iceberg-offload trigger --wait   (or: PREFECT_API_URL={settings.prefect.api_url}"
                     f" prefect deployment run 'iceberg-offload-main/iceberg-offload-15min')")
        return "\n".join(lines)

    _print(args, report, text)
    return EXIT_OK


RUNBOOKS = {"worker down": "scheduler-down.md (scenario 1)", "server down": "scheduler-down.md (scenario 2)",
            "no runs": "scheduler-down.md (scenario 3)", "metrics unreachable": "scheduler-down.md (scenario 4)",
            "full restart": "scheduler-down.md (scenario 5)", "offload failing": "offload-failure.md",
            "lag": "lag.md", "watermark": "watermark-recovery.md", "ttl risk": "ttl-risk.md"}


def cmd_doctor(args: argparse.Namespace) -> int:
    from .doctor import diagnose

    report = diagnose(_prefect_settings(args))
    data = report.as_dict()
    data["runbook"] = f"docs/runbooks/{RUNBOOKS[report.scenario]}" if report.scenario else None

    def text() -> str:
        marks = {"ok": "ok", "warn": "WARN", "fail": "FAIL"}
        rows = [[marks[c.status], c.name, c.saw] for c in report.checks]
        out = [_grid(["", "check", "saw"], rows)]
        fixes = [f"  {c.name}: {c.fix}" for c in report.checks if c.status != "ok" and c.fix]
        if fixes:
            out += ["", "fix:", *fixes]
        out.append("")
        out.append(f"scenario: {report.scenario} -> {data['runbook']}" if report.scenario else "all checks passed")
        return "\n".join(out)

    _print(args, data, text)
    return EXIT_OK if report.ok else EXIT_FAILED


def cmd_recover(args: argparse.Namespace) -> int:
    from .recover import recover

    result = recover(_prefect_settings(args), args.yes, args.resume_schedule, args.timeout)
    data = result.as_dict()

    def text() -> str:
        head = "recovering:" if args.yes else "would do (add --yes to do it):"
        lines = [head] + [f"  {i + 1}. {s.name}: {s.result if s.done else s.action}"
                          for i, s in enumerate(result.steps)]
        if args.yes:
            after = data["after"] or {}
            verdict = "all checks pass" if after.get("ok") else f"still failing: {after.get('scenario')}"
            lines.append(f"\nafter: {verdict} ({data['seconds']}s); details: iceberg-offload doctor")
        return "\n".join(lines)

    _print(args, data, text)
    return EXIT_OK if not args.yes or data["ok"] else EXIT_FAILED


def cmd_worker(args: argparse.Namespace) -> int:
    from .stack import run_worker

    return run_worker(_prefect_settings(args), args.name, args.limit)


def cmd_metrics(args: argparse.Namespace) -> int:
    import signal
    import threading

    from .metrics import serve

    settings = _prefect_settings(args)
    handle = serve(settings)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    print(f"metrics on http://{settings.metrics.host}:{settings.metrics.port}/metrics", flush=True)
    done.wait()
    handle.shutdown()
    return EXIT_OK


def cmd_supervise(args: argparse.Namespace) -> int:
    from .stack import supervise

    return supervise(_prefect_settings(args))


def _ps_text(data: dict[str, Any]) -> str:
    rows = [[p["name"], p["pid"], "running" if p["running"] else "stopped", p["restarts"], p["log"]]
            for p in data["processes"]]
    out = [_grid(["process", "pid", "state", "restarts", "log"], rows)]
    out.append(f"\nAPI ready: {'yes' if data['api_ready'] else 'NO'}   workers online: {data['workers_online']}")
    out += [f"{k:8} {v}" for k, v in data["urls"].items()]
    return "\n".join(out)


def cmd_up(args: argparse.Namespace) -> int:
    from .stack import up

    data = up(_prefect_settings(args), args.timeout)
    _print(args, data, lambda: ("started the stack\n" if data["started"] else "already running\n") + _ps_text(data))
    return EXIT_OK


def cmd_down(args: argparse.Namespace) -> int:
    from .stack import down

    data = down(_prefect_settings(args))
    _print(args, data, lambda: str(data["message"]))
    return EXIT_OK


def cmd_ps(args: argparse.Namespace) -> int:
    from .stack import ps

    data = ps(_prefect_settings(args))
    _print(args, data, lambda: _ps_text(data))
    return EXIT_OK if data["running"] else EXIT_FAILED


def cmd_schedule(args: argparse.Namespace) -> int:
    _prefect_settings(args)
    from .deployments import schedule_state, set_paused

    if args.action == "show":
        data = schedule_state(args.deployment)
    else:
        data = set_paused(args.deployment, args.action == "pause")

    def text() -> str:
        rows = [[d["deployment"], "missing" if not d["exists"] else "paused" if not d["active"] else "active",
                 ", ".join(s["schedule"] for s in d["schedules"])] for d in data]
        return _grid(["deployment", "schedule", "when"], rows)

    _print(args, {"deployments": data}, text)
    return EXIT_OK


def cmd_trigger(args: argparse.Namespace) -> int:
    _prefect_settings(args)
    from .deployments import trigger

    data = trigger(args.deployment, wait=args.wait, timeout=args.timeout)
    _print(args, data, lambda: f"flow run {data['flow_run_id']} ({data['name']}): {data['state']}"
           + (f" in {data['seconds']}s" if args.wait else ""))
    return EXIT_OK if not args.wait or data["state"] == "COMPLETED" else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
