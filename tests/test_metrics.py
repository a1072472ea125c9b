"""The exporter against real state: values after an offload, the same after a restart, never waiting on the
embedded engine, answering with Prefect down; the alert rules against promtool and the exporter; the
dashboard's variables and queries against the exporter; metric names by convention, defined once."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from conftest import TRADES_DDL, clickhouse, insert_trades, sink_for, trades_table
from iceberg_offload import names
from iceberg_offload.engine.offload import run_cycle

ROOT = Path(__file__).parent.parent
RULES = ROOT / "deploy" / "prometheus" / "rules" / "iceberg-offload.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "iceberg-offload.json"


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


def families(port: int) -> dict[str, tuple[str, set[str]]]:
    """Every metric family the endpoint declares (its `# TYPE` line, samples or not): its type, label names."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out: dict[str, tuple[str, set[str]]] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            out[name] = (kind, set())
        elif line and not line.startswith("#"):
            name, _, labels = line.rsplit(" ", 1)[0].partition("{")
            out[name][1].update(re.findall(r'(\w+)="', labels))
    return out


PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset"}


def metric_names(expr: str) -> set[str]:
    """The series a PromQL expression reads: its identifiers that are not functions, keywords or labels."""
    e = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)
    e = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", e)  # label matchers, range windows
    e = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)  # label lists
    return {m for m in re.findall(r"\b([a-zA-Z_:][\w:]*)\b(?!\s*\()", e) if m not in PROMQL_WORDS}


def test_metric_names_follow_the_conventions_and_the_docs_list_them():
    """Base units, the offload_ prefix, _total only on counters, last values say last; docs/metrics.md lists
    every name and every rename, and no old name is left in the rules, the dashboard or the docs."""
    for m in names.METRICS:
        assert re.fullmatch(r"offload_[a-z0-9_]+", m), m
        assert not re.search(r"_(milliseconds|minutes|hours|days)$", m) or m == names.METRIC_LAG_MINUTES  # base units
        assert not m.endswith("_duration_seconds") or "_last_" in m, f"{m}: a last value says last"
    assert names.METRIC_INFO == "offload_info" and names.METRIC_LAG_MINUTES == "offload_lag_minutes"  # seed runbook
    doc = (ROOT / "docs" / "metrics.md").read_text()
    table, _, renamed = doc.partition("## Renamed in this version")
    for m in names.METRICS:
        assert f"`{m}`" in table, f"{m} is not in docs/metrics.md's table"
    for old, new in names.RENAMED_METRICS.items():
        assert f"| `{old}` | `{new}` |" in renamed, f"{old} -> {new} is not in the renamed list"
        assert not re.search(rf"\b{old}\b", table), f"docs/metrics.md still names {old}"
    elsewhere = [RULES, DASHBOARD, ROOT / "deploy/prometheus/tests/iceberg-offload.test.yml", ROOT / "README.md"]
    elsewhere += sorted((ROOT / "docs").rglob("*.md"))
    for path in elsewhere:
        if path.name == "metrics.md":
            continue
        text = path.read_text()
        for old in names.RENAMED_METRICS:
            assert not re.search(rf"\b{old}\b", text), f"{path.relative_to(ROOT)} still names {old}"


@pytest.fixture
def offloaded(make_settings, sqlite_uri):
    from stackutil import free_port

    now = int(time.time())
    s = make_settings([trades_table(), trades_table("quiet")], catalog_uri=sqlite_uri)
    s = s.model_copy(
        update={
            "metrics": s.metrics.model_copy(
                update={"port": free_port(), "refresh_seconds": 0.5, "hot_refresh_seconds": 0.5}
            ),
            "prefect": s.prefect.model_copy(update={"api_url": f"http://127.0.0.1:{free_port()}/api"}),
        }
    )
    with clickhouse(s) as ch:
        ch.command(TRADES_DDL.format(name="trades") + " TTL toDateTime(ts) + INTERVAL 7 DAY")
        ch.command(TRADES_DDL.format(name="quiet"))
        insert_trades(ch, "trades", (now - 3 * 3600) * 1000, 1000)
    run_cycle(s)
    return s


def test_exporter_serves_durable_state_and_survives_restart(offloaded):
    from iceberg_offload.ops.metrics import serve

    s, port = offloaded, offloaded.metrics.port
    wm, last = sink_for(s).watermark(sink_for(s).load("trades"))
    handle = serve(s)
    try:
        first = scrape(port)
    finally:
        handle.shutdown()
    t = '{table="trades"}'
    assert first[f"offload_watermark_timestamp_seconds{t}"] == pytest.approx(wm.ts_ns / 1e9)
    assert first['offload_rows_total{layer="bronze",table="trades"}'] == 1000
    assert first[f"offload_commits_total{t}"] == last.totals[1] == 1
    assert first[f"offload_cold_rows{t}"] == first[f"offload_hot_rows{t}"] == 1000
    assert first[f"offload_pending_rows{t}"] == 0
    assert first[f"offload_ttl_headroom_seconds{t}"] == 7 * 86400  # nothing pending: the whole TTL span
    assert first[f"offload_lag_seconds{t}"] == pytest.approx(time.time() - wm.ts_ns / 1e9, abs=5)
    assert first[f"offload_lag_minutes{t}"] == pytest.approx(first[f"offload_lag_seconds{t}"] / 60, abs=0.1)
    assert first["offload_tables_configured"] == 2 and first["offload_catalog_up"] == 1
    assert first["offload_source_up"] == 1 and first["offload_prefect_api_up"] == 0  # no server here
    assert 'offload_info{schedule="*/15 * * * *",tables="2",version="0.1.0"}' in first
    assert 'offload_watermark_timestamp_seconds{table="quiet"}' not in first  # nothing offloaded yet

    time.sleep(1.5)
    handle = serve(s)  # a new process would see exactly this: nothing lives in memory
    try:
        second = scrape(port)
    finally:
        handle.shutdown()
    for key in (
        f"offload_watermark_timestamp_seconds{t}",
        'offload_rows_total{layer="bronze",table="trades"}',
        f"offload_commits_total{t}",
        f"offload_cold_rows{t}",
        f"offload_hot_rows{t}",
    ):
        assert second[key] == first[key], key
    assert second[f"offload_lag_seconds{t}"] >= first[f"offload_lag_seconds{t}"] + 1  # lag keeps growing


HOLDER = """
import sys, time
from iceberg_offload import config
from iceberg_offload.clickhouse.client import open_source
with open_source(config.load(sys.argv[1], env={}).source):
    print("held", flush=True)
    time.sleep(120)
"""


def test_scrape_never_waits_for_the_embedded_engine(offloaded):
    from iceberg_offload.ops.metrics import serve

    s = offloaded
    handle = serve(s)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, s.path], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "held"
        time.sleep(1.5)  # several refreshes try the engine while it is held
        t0 = time.monotonic()
        values = scrape(s.metrics.port)
        waited = time.monotonic() - t0
        assert waited < 5  # lock_timeout_seconds is 20 here: a scrape that waited would take that long
        assert values['offload_hot_rows{table="trades"}'] == 1000  # served from the last refresh
        assert values["offload_source_up"] == 1  # busy is not down
    finally:
        holder.kill()
        holder.wait()
        handle.shutdown()
    # a refresh that was waiting for the engine has ended: nothing of the exporter opens it after shutdown
    # (the next test's engine at another path would be refused)
    assert not handle.refresher.is_alive()


def exported_names(values: dict[str, float]) -> set[str]:
    return {re.split(r"[{ ]", k)[0] for k in values}


def test_alert_rules_pass_promtool_and_only_use_exported_series(offloaded):
    from iceberg_offload.ops.metrics import serve

    check = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    test = subprocess.run(
        ["promtool", "test", "rules", "tests/iceberg-offload.test.yml"],
        capture_output=True,
        text=True,
        cwd=ROOT / "deploy" / "prometheus",
    )
    assert test.returncode == 0, test.stdout + test.stderr

    handle = serve(offloaded)
    try:
        served = exported_names(scrape(offloaded.metrics.port)) | {"up"}
        declared = families(offloaded.metrics.port)
    finally:
        handle.shutdown()
    assert set(declared) == set(names.METRICS), "names.METRICS and the endpoint's families differ"
    for name, (kind, _) in declared.items():  # _total on counters and only there
        assert name.endswith("_total") == (kind == "counter"), f"{name} is a {kind}"
    rules = yaml.safe_load(RULES.read_text())["groups"][0]["rules"]
    tested = (ROOT / "deploy" / "prometheus" / "tests" / "iceberg-offload.test.yml").read_text()
    required = {
        "IcebergOffloadSchedulerDown",
        "IcebergOffloadConsecutiveFailures",
        "IcebergOffloadLagElevated",
        "IcebergOffloadLagCritical",
        "IcebergOffloadWatermarkStale",
        "IcebergOffloadCycleSlow",
        "IcebergOffloadTTLRisk",
        "IcebergOffloadWorkerOffline",
        "IcebergOffloadSchedulePaused",
        "IcebergOffloadNoRecentRuns",
        "IcebergOffloadSourceDown",
        "IcebergOffloadCatalogDown",
    }
    assert required <= {r["alert"] for r in rules}
    seed = next(r for r in rules if r["alert"] == "IcebergOffloadSchedulerDown")
    assert seed["expr"].strip() == 'up{job="iceberg-scheduler"} == 0'
    for rule in rules:
        runbook = rule["annotations"]["runbook_url"]
        assert (ROOT / runbook).is_file(), f"{rule['alert']}: {runbook} does not exist"
        metrics = metric_names(rule["expr"])
        assert metrics and metrics <= served, f"{rule['alert']} queries {metrics - served}, never exported"
        for window in re.findall(r"\[(\d+)m\]", rule["expr"]):
            assert int(window) >= 30, f"{rule['alert']}: a [{window}m] window is shorter than two cycles"
        if "table" in rule["expr"] or any("table" in declared[m][1] for m in metrics - {"up"}):
            assert "$labels.table" in rule["annotations"]["summary"], f"{rule['alert']} summary lacks the table"
        assert f"alertname: {rule['alert']}" in tested, f"{rule['alert']} has no promtool test"


def test_dashboard_uses_its_variables_and_only_exported_series(offloaded):
    """A `datasource` variable every panel and query uses, a multi-valued `table` variable (with All) every
    per-table query filters on, and nothing queried that the exporter does not serve."""
    from iceberg_offload.ops.metrics import serve

    handle = serve(offloaded)
    try:
        served = {name: labels for name, (_, labels) in families(offloaded.metrics.port).items()}
        samples = scrape(offloaded.metrics.port)
    finally:
        handle.shutdown()
    served["up"] = {"job", "instance"}
    dash = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    ds = variables["datasource"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    assert ds["current"]["value"] == "prometheus-k2"  # the provisioned datasource is the default
    table = variables["table"]
    assert table["type"] == "query" and table["multi"] and table["includeAll"] and table["allValue"] == ".*"
    assert table["datasource"]["uid"] == "${datasource}"
    query = table["query"]["query"] if isinstance(table["query"], dict) else table["query"]
    found = re.fullmatch(r"label_values\((\w+), table\)", query)
    assert found and "table" in served[found.group(1)], query
    listed = {re.search(r'table="([^"]+)"', k).group(1) for k in samples if k.startswith(found.group(1) + "{")}
    assert listed == {t.target for t in offloaded.tables}, "the table variable misses a configured table"
    per_table = {m for m, labels in served.items() if "table" in labels}
    queried = set()
    for panel in dash["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            expr = target["expr"]
            assert target["datasource"]["uid"] == "${datasource}", f"{panel['title']}: {expr}"
            metrics = metric_names(expr)
            assert metrics and metrics <= set(served), f"{panel['title']} queries {metrics - set(served)}"
            for m in metrics & per_table:
                assert re.search(rf'\b{m}\{{[^}}]*table=~"\$table"', expr), f"{panel['title']}: {m} ignores $table"
            queried |= metrics
    assert names.METRIC_LAG_SECONDS in queried and names.METRIC_LAG_MINUTES not in queried  # base units
