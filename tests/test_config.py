"""Configuration: defaults, environment overrides, and one clear line per mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from iceberg_offload import config
from iceberg_offload.errors import ConfigError


def test_no_file_gives_the_embedded_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = config.load(None, env={})
    assert s.source.dsn == f"chdb://{tmp_path}/.offload/clickhouse"
    assert s.catalog.uri == f"sqlite:///{tmp_path}/.offload/catalog.db"
    assert s.catalog.warehouse == f"file://{tmp_path}/.offload/warehouse"
    assert (s.catalog.type, s.catalog.namespace, s.offload.settle_seconds) == ("sql", "cold", 120)
    with pytest.raises(ConfigError, match="no tables configured") as err:
        s.select(None)
    assert "iceberg-offload demo" in err.value.fix


def test_relative_paths_resolve_against_the_config_folder(tmp_path, monkeypatch):
    cfg = tmp_path / "etc" / "offload.toml"
    cfg.parent.mkdir()
    cfg.write_text('[source]\ndsn = "chdb://data/ch"\n[catalog]\nuri = "sqlite:///cat.db"\nwarehouse = "wh"\n')
    monkeypatch.chdir("/")
    s = config.load(cfg, env={})
    assert s.source.dsn == f"chdb://{tmp_path}/etc/data/ch"
    assert s.catalog.uri == f"sqlite:///{tmp_path}/etc/cat.db"
    assert s.catalog.warehouse == f"file://{tmp_path}/etc/wh"


def test_relative_paths_from_the_environment_resolve_against_the_config_folder(tmp_path, monkeypatch):
    cfg = tmp_path / "etc" / "offload.toml"
    (tmp_path / "etc" / "secrets").mkdir(parents=True)
    cfg.write_text("")
    (tmp_path / "etc" / "secrets" / "dsn").write_text("chdb://data/ch\n")
    monkeypatch.chdir("/")
    s = config.load(
        cfg,
        env={
            "OFFLOAD__SOURCE__DSN_FILE": "secrets/dsn",
            "OFFLOAD__CATALOG__URI": "sqlite:///cat.db",
            "OFFLOAD__PREFECT__DATABASE_URL": "sqlite+aiosqlite:///prefect.db",
        },
    )
    assert s.source.dsn == f"chdb://{tmp_path}/etc/data/ch"
    assert s.catalog.uri == f"sqlite:///{tmp_path}/etc/cat.db"
    assert s.prefect.database_url == f"sqlite+aiosqlite:///{tmp_path}/etc/prefect.db"


def test_without_a_config_file_relative_paths_resolve_against_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = config.load(env={})
    assert s.path == "" and s.source.dsn == f"chdb://{tmp_path}/.offload/clickhouse"
    assert s.catalog.warehouse == f"file://{tmp_path}/.offload/warehouse"


def test_environment_overrides_follow_the_key_path(tmp_path):
    cfg = tmp_path / "offload.toml"
    cfg.write_text('[[tables]]\nsource = "a"\ntimestamp_column = "ts"\n')
    s = config.load(
        cfg,
        env={
            "OFFLOAD__SOURCE__DSN": "http://u:p@ch:8123/",
            "OFFLOAD__OFFLOAD__SETTLE_SECONDS": "30",
            "OFFLOAD__TABLES__0__FINAL": "true",
            "OFFLOAD__TABLES__0__KEY_COLUMNS": '["ts", "id"]',
            "OFFLOAD__CATALOG__PROPERTIES": '{"s3.endpoint": "http://minio:9000"}',
        },
    )
    assert s.source.dsn == "http://u:p@ch:8123/" and s.offload.settle_seconds == 30
    assert s.tables[0].final is True and s.tables[0].key_columns == ["ts", "id"]
    assert s.catalog.properties == {"s3.endpoint": "http://minio:9000"}
    assert s.tables[0].target == "a"


def _err(tmp_path: Path, text: str) -> ConfigError:
    cfg = tmp_path / "offload.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as err:
        config.load(cfg, env={})
    return err.value


def test_unknown_key_is_named_with_its_section(tmp_path):
    e = _err(tmp_path, '[source]\ndsnn = "chdb://x"\n')
    assert "unknown key source.dsnn" in e.message and "[source]" in e.fix


def test_missing_key_is_named(tmp_path):
    e = _err(tmp_path, '[[tables]]\nsource = "a"\n')
    assert "tables[0].timestamp_column is missing" in e.message
    assert "add timestamp_column = ... to the [[tables]] section" in e.fix


def test_wrong_type_names_key_and_value(tmp_path):
    e = _err(tmp_path, '[offload]\nsettle_seconds = "soon"\n')
    assert "offload.settle_seconds = 'soon'" in e.message and "valid integer" in e.fix
    e = _err(tmp_path, '[[tables]]\nsource = "a"\ntimestamp_column = "ts"\npartition_by = "week"\n')
    assert "tables[0].partition_by = 'week'" in e.message and "'hour', 'day', 'month' or 'none'" in e.message


def test_bad_toml_and_missing_file(tmp_path):
    assert "not valid TOML" in _err(tmp_path, "[source\n").message
    with pytest.raises(ConfigError, match="does not exist"):
        config.load(tmp_path / "nope.toml", env={})


def test_duplicate_targets_and_columns_without_the_key(tmp_path):
    e = _err(
        tmp_path,
        '[[tables]]\nsource = "a"\ntimestamp_column = "ts"\n[[tables]]\nsource = "b"\n'
        'target = "a"\ntimestamp_column = "ts"\n',
    )
    assert "two [[tables]] entries write to target 'a'" in e.message
    e = _err(tmp_path, '[[tables]]\nsource = "a"\ntimestamp_column = "ts"\nsequence_column = "s"\ncolumns = ["ts"]\n')
    assert "columns must include s" in e.message


def test_passwords_never_appear_in_errors(tmp_path):
    e = _err(tmp_path, '[source]\ndsn = "http://admin:hunter2@ch:8123/"\nbogus = 1\n')
    assert "hunter2" not in str(e)
    from iceberg_offload.errors import redact

    assert redact("http://admin:hunter2@ch:8123/ password=hunter2") == "http://admin:***@ch:8123/ password=***"


def test_example_config_loads_and_documents_every_key():
    example = Path(__file__).parent.parent / "offload.example.toml"
    s = config.load(example, env={})
    assert [t.source for t in s.tables] == ["bronze_trades_binance", "ohlcv_1m"]
    text = example.read_text()
    for section in (
        config.SourceSettings,
        config.CatalogSettings,
        config.OffloadSettings,
        config.TableSettings,
        config.PrefectSettings,
        config.MetricsSettings,
        config.ScheduleSettings,
        config.MaintenanceSettings,
    ):
        for key in section.model_fields:
            assert f"{key} =" in text or f"[catalog.{key}]" in text, f"offload.example.toml does not mention {key}"
