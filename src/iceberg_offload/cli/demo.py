"""A synthetic market-data platform in the embedded ClickHouse, shaped like the seed's K2 stack.

Each call inserts a fresh slice of trades (from the newest existing trade up to now), derives the
silver trades and the OHLCV candles from it, and writes offload.toml when there is none.
"""

from __future__ import annotations

import time
from pathlib import Path

from iceberg_offload.clickhouse.client import Source, open_source
from iceberg_offload.config import Settings, load
from iceberg_offload.errors import ConfigError

EXCHANGES = ("binance", "kraken", "coinbase")
CANDLES = {"1m": 60, "5m": 300, "15m": 900, "30m": 1800, "1h": 3600, "1d": 86400}
FIRST_SLICE_SECONDS = 3 * 3600
TRADES_PER_SECOND = 2

_BRONZE = """CREATE TABLE IF NOT EXISTS {db}.bronze_trades_{ex} (
    exchange_timestamp DateTime64(3),
    sequence_number UInt64,
    symbol LowCardinality(String),
    trade_id String,
    price Decimal(18, 8),
    quantity Decimal(18, 8),
    side Enum8('buy' = 1, 'sell' = 2),
    ingested_at DateTime64(6, 'UTC') DEFAULT now64(6)
) ENGINE = MergeTree PARTITION BY toYYYYMMDD(exchange_timestamp)
ORDER BY (exchange_timestamp, sequence_number)
TTL toDateTime(exchange_timestamp) + INTERVAL 7 DAY"""

_SILVER = """CREATE TABLE IF NOT EXISTS {db}.silver_trades (
    trade_uuid UUID,
    exchange LowCardinality(String),
    symbol LowCardinality(String),
    side Enum8('buy' = 1, 'sell' = 2),
    price Decimal(18, 8),
    quantity Decimal(18, 8),
    exchange_timestamp DateTime64(6, 'UTC'),
    sequence_number UInt64,
    tags Array(String),
    attributes Map(String, String),
    maker_order_id Nullable(UInt64)
) ENGINE = MergeTree PARTITION BY toYYYYMMDD(exchange_timestamp)
ORDER BY (exchange_timestamp, sequence_number)
TTL toDateTime(exchange_timestamp) + INTERVAL 30 DAY"""

_OHLCV = """CREATE TABLE IF NOT EXISTS {db}.ohlcv_{name} (
    window_start DateTime('UTC'),
    exchange LowCardinality(String),
    symbol LowCardinality(String),
    open Decimal(18, 8),
    high Decimal(18, 8),
    low Decimal(18, 8),
    close Decimal(18, 8),
    volume Decimal(38, 8),
    trade_count UInt64
) ENGINE = SummingMergeTree((volume, trade_count)) PARTITION BY toYYYYMM(window_start)
ORDER BY (window_start, exchange, symbol)
TTL window_start + INTERVAL 90 DAY"""


def create_tables(source: Source) -> None:
    db = source.database
    source.command(f"CREATE DATABASE IF NOT EXISTS {db}")
    for ex in EXCHANGES:
        source.command(_BRONZE.format(db=db, ex=ex))
    source.command(_SILVER.format(db=db))
    for name in CANDLES:
        source.command(_OHLCV.format(db=db, name=name))


def insert_slice(source: Source, now: float | None = None) -> dict[str, int]:
    """Insert trades from the newest existing one up to `now`, then silver rows and candles for them."""
    db, now = source.database, now if now is not None else time.time()
    newest = source.rows(
        f"SELECT toUnixTimestamp64Milli(max(exchange_timestamp)), count() FROM {db}.bronze_trades_binance"
    )[0]
    start_ms = int(newest[0]) + 1 if int(newest[1]) else int((now - FIRST_SLICE_SECONDS) * 1000)
    end_ms = int(now * 1000)
    if end_ms <= start_ms:
        return {}
    n = max(1, (end_ms - start_ms) * TRADES_PER_SECOND // 1000)
    inserted: dict[str, int] = {}
    for i, ex in enumerate(EXCHANGES):
        seq0 = int(source.rows(f"SELECT max(sequence_number) + 1 FROM {db}.bronze_trades_{ex}")[0][0] or 0)
        source.command(f"""INSERT INTO {db}.bronze_trades_{ex}
            (exchange_timestamp, sequence_number, symbol, trade_id, price, quantity, side)
            SELECT fromUnixTimestamp64Milli(toInt64({start_ms} + intDiv(number * {end_ms - start_ms}, {n}))),
                   {seq0} + number,
                   ['BTC-USD', 'ETH-USD', 'SOL-USD'][1 + number % 3],
                   concat('{ex}-', toString({seq0} + number)),
                   toDecimal64(100 + (cityHash64(number, {i}, {seq0}) % 10000000) / 100, 8),
                   toDecimal64((cityHash64(number, {i}, 7) % 100000) / 10000, 8),
                   if(number % 2 = 0, 'buy', 'sell')
            FROM numbers({n})""")
        inserted[f"bronze_trades_{ex}"] = n
        source.command(f"""INSERT INTO {db}.silver_trades
            SELECT generateUUIDv4(sequence_number), '{ex}', symbol, side, price, quantity,
                   toDateTime64(exchange_timestamp, 6, 'UTC'), sequence_number * 4 + {i},
                   ['spot', '{ex}'], map('venue', '{ex}', 'trade_id', trade_id),
                   if(sequence_number % 3 = 0, NULL, sequence_number * 10)
            FROM {db}.bronze_trades_{ex} WHERE sequence_number >= {seq0}""")
    inserted["silver_trades"] = n * len(EXCHANGES)
    lo = f"fromUnixTimestamp64Milli(toInt64({start_ms}), 'UTC')"
    for name, seconds in CANDLES.items():
        source.command(f"""INSERT INTO {db}.ohlcv_{name}
            SELECT toStartOfInterval(exchange_timestamp, INTERVAL {seconds} SECOND, 'UTC') AS w, exchange, symbol,
                   argMin(price, exchange_timestamp), max(price), min(price), argMax(price, exchange_timestamp),
                   sum(toDecimal128(quantity, 8)), count()
            FROM {db}.silver_trades WHERE exchange_timestamp >= {lo}
            GROUP BY w, exchange, symbol""")
    return inserted


def config_text(settings: Settings) -> str:
    lines = [
        "# Written by `iceberg-offload demo`: the embedded default with the demo's ten tables.",
        "# Every key can be overridden by an environment variable: [source] dsn -> OFFLOAD__SOURCE__DSN.",
        "",
        "[source]",
        'dsn = "chdb://.offload/clickhouse"',
        f'database = "{settings.source.database}"',
        "",
        "[catalog]",
        'name = "offload"',
        'type = "sql"',
        'uri = "sqlite:///.offload/catalog.db"',
        'warehouse = "file://.offload/warehouse"',
        'namespace = "cold"',
        "",
        "[offload]",
        "settle_seconds = 120",
        "max_rows_per_commit = 2000000",
    ]
    for ex in EXCHANGES:
        lines += [
            "",
            "[[tables]]",
            f'source = "bronze_trades_{ex}"',
            'layer = "bronze"',
            'timestamp_column = "exchange_timestamp"',
            'sequence_column = "sequence_number"',
            'partition_by = "day"',
        ]
    lines += [
        "",
        "[[tables]]",
        'source = "silver_trades"',
        'layer = "silver"',
        'timestamp_column = "exchange_timestamp"',
        'sequence_column = "sequence_number"',
        'partition_by = "day"',
    ]
    for name, seconds in CANDLES.items():
        lines += [
            "",
            "[[tables]]",
            f'source = "ohlcv_{name}"',
            'layer = "gold"',
            'timestamp_column = "window_start"',
            f'partition_by = "{"month" if seconds >= 3600 else "day"}"',
            "final = true",
            f"closed_after_seconds = {seconds}",
            'key_columns = ["window_start", "exchange", "symbol"]',
        ]
    return "\n".join(lines) + "\n"


def write_config(config_path: Path) -> bool:
    """Write the demo's config (the embedded default, its paths relative to the file) unless one is there.
    True when written."""
    if config_path.exists():
        return False
    config_path.write_text(config_text(load(None, env={})))
    return True


def seed(settings: Settings) -> dict[str, int]:
    """Create the demo tables in the embedded engine `settings` name and insert a slice: {table: rows}."""
    if not settings.source.dsn.startswith("chdb://"):
        raise ConfigError(
            f"the demo seeds the embedded engine, but [source] dsn is {settings.source.dsn}",
            "run the demo without a config (or in an empty folder) to use the embedded default",
        )
    with open_source(settings.source) as source:
        create_tables(source)
        return insert_slice(source)
