"""Operator commands for the orchestration and operations layer: deploy, worker, metrics, up/down/ps,
trigger, schedule, doctor, recover. Each loads the config and sets the Prefect environment first."""

from __future__ import annotations

from typing import Any

from iceberg_offload import names
from iceberg_offload import payloads_ops as o
from iceberg_offload.cli.output import (
    EXIT_FAILED,
    EXIT_OK,
    Args,
    Grid,
    Part,
    emit,
    load_prefect_settings,
    load_settings,
)


def cmd_deploy(args: Args) -> int:
    settings = load_prefect_settings(args)
    from iceberg_offload.orchestration.deployments import deploy

    report = deploy(settings).as_dict()

    def text() -> str:
        lines = [f"work pool {report['work_pool']['name']}: {report['work_pool']['status']}"]
        lines += [f"deployment {d['deployment']}: {d['status']}" for d in report["deployments"]]
        lines += [f"limit {x['limit']} (1 in flight): {x['status']}" for x in report["limits"]]
        lines += [f"note: {n}" for n in report["notes"]]
        lines.append(
            f"trigger a run: iceberg-offload trigger --wait   (or: PREFECT_API_URL={settings.prefect.api_url}"
            f" prefect deployment run '{names.MAIN}')"
        )
        return "\n".join(lines)

    emit(args, report, text, o.Deploy)
    return EXIT_OK


def cmd_doctor(args: Args) -> int:
    from iceberg_offload.ops.doctor import diagnose

    report = diagnose(load_prefect_settings(args), args.engine_only)
    data = report.as_dict()

    def text() -> list[Part]:
        marks = {"ok": "ok", "warn": "WARN", "fail": "FAIL"}
        rows = [[marks[c.status], c.name, c.saw] for c in report.checks]
        out: list[Part] = [Grid(["", "check", "saw"], rows)]
        fixes = [f"  {c.name}: {c.fix}" for c in report.checks if c.status != "ok" and c.fix]
        if fixes:
            out += ["", "fix:", *fixes]
        out.append("")
        out.append(f"scenario: {report.scenario} -> {data['runbook']}" if report.scenario else "all checks passed")
        return out

    emit(args, data, text, o.Doctor)
    return EXIT_OK if report.ok else EXIT_FAILED


def cmd_recover(args: Args) -> int:
    from iceberg_offload.ops.recover import recover

    result = recover(load_prefect_settings(args), args.yes, args.resume_schedule, args.timeout)
    data = result.as_dict()

    def text() -> str:
        head = "recovering:" if args.yes else "would do (add --yes to do it):"
        lines = [head] + [
            f"  {i + 1}. {s.name}: {s.result if s.done else s.action}" for i, s in enumerate(result.steps)
        ]
        if args.yes:
            after = data["after"] or {}
            verdict = "all checks pass" if after.get("ok") else f"still failing: {after.get('scenario')}"
            lines.append(f"\nafter: {verdict} ({data['seconds']}s); details: iceberg-offload doctor")
        return "\n".join(lines)

    emit(args, data, text, o.Recover)
    return EXIT_OK if not args.yes or data["ok"] else EXIT_FAILED


def cmd_worker(args: Args) -> int:
    from iceberg_offload.ops import worker

    return worker.run(load_prefect_settings(args), args.name, args.limit)


def cmd_metrics(args: Args) -> int:
    import signal
    import threading

    from iceberg_offload.ops.metrics import serve

    settings = load_prefect_settings(args)
    handle = serve(settings)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    print(f"metrics on http://{settings.metrics.host}:{settings.metrics.port}/metrics", flush=True)
    done.wait()
    handle.shutdown()
    return EXIT_OK


def cmd_supervise(args: Args) -> int:
    from iceberg_offload.orchestration.stack import supervise

    return supervise(load_prefect_settings(args))


def _ps_text(data: dict[str, Any]) -> list[Part]:
    rows = [
        [p["name"], p["pid"], "running" if p["running"] else "stopped", p["restarts"], p["log"]]
        for p in data["processes"]
    ]
    out: list[Part] = [Grid(["process", "pid", "state", "restarts", "log"], rows)]
    out.append(f"\nAPI ready: {'yes' if data['api_ready'] else 'NO'}   workers online: {data['workers_online']}")
    out += [f"{k:8} {v}" for k, v in data["urls"].items()]
    return out


def cmd_up(args: Args) -> int:
    from iceberg_offload.orchestration.stack import up

    data = {"ok": True} | up(load_prefect_settings(args), args.timeout)
    emit(args, data, lambda: ["started the stack" if data["started"] else "already running", *_ps_text(data)], o.Up)
    return EXIT_OK


def cmd_down(args: Args) -> int:
    from iceberg_offload.orchestration.stack import down

    data = {"ok": True} | down(load_prefect_settings(args))
    emit(args, data, lambda: str(data["message"]), o.Down)
    return EXIT_OK


def cmd_ps(args: Args) -> int:
    from iceberg_offload.orchestration.stack import ps

    data = ps(load_prefect_settings(args))
    data = {"ok": data["running"]} | data
    emit(args, data, lambda: _ps_text(data), o.Ps)
    return EXIT_OK if data["ok"] else EXIT_FAILED


def cmd_schedule(args: Args) -> int:
    from iceberg_offload.orchestration.control import schedule_state, set_paused

    settings = load_settings(args)
    if args.action == "show":
        data = schedule_state(settings, args.deployment)
    else:
        data = set_paused(settings, args.deployment, args.action == "pause")

    def text() -> list[Part]:
        rows = [
            [
                d["deployment"],
                "missing" if not d["exists"] else "paused" if not d["active"] else "active",
                ", ".join(s["schedule"] for s in d["schedules"]),
            ]
            for d in data
        ]
        return [Grid(["deployment", "schedule", "when"], rows)]

    emit(args, {"ok": True, "deployments": data}, text, o.Schedules)
    return EXIT_OK


def cmd_trigger(args: Args) -> int:
    from iceberg_offload.orchestration.control import trigger

    data = trigger(load_settings(args), args.deployment, wait=args.wait, timeout=args.timeout)
    emit(
        args,
        data,
        lambda: (
            f"flow run {data['flow_run_id']} ({data['name']}): {data['state']}"
            + (f" in {data['seconds']}s" if args.wait else "")
            + (f"\n{data['note']}" if data["note"] else "")
        ),
        o.Trigger,
    )
    return EXIT_OK if data["ok"] else EXIT_FAILED
