"""Every ClickHouse type against real chdb tables: offloaded, read back with pyiceberg, values equal."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal

import pyarrow as pa
import pytest

from conftest import clickhouse, cold, sink_for
from iceberg_offload.clickhouse.types import parse
from iceberg_offload.engine.offload import run_cycle
from iceberg_offload.engine.typemap import plan_columns
from iceberg_offload.errors import TypeRefused

UTC = dt.UTC
T0 = "2026-01-02 03:04:05.678"

COLUMNS = """
 id UInt32, ts DateTime64(3, 'UTC'),
 i8 Int8, i16 Int16, i32 Int32, i64 Int64, u8 UInt8, u16 UInt16, u32 UInt32, u64 UInt64,
 i128 Int128, u128 UInt128, i256 Int256, u256 UInt256, f32 Float32, f64 Float64,
 d9 Decimal(9, 2), d18 Decimal(18, 6), d38 Decimal(38, 10), b Bool, s String, fs FixedString(4), u UUID,
 dt Date, d32 Date32, dtm DateTime, dtm_tz DateTime('Asia/Tokyo'), dt64_0 DateTime64(0),
 dt64_6 DateTime64(6, 'America/New_York'), e8 Enum8('a' = 1, 'b' = -2), e16 Enum16('x' = 1000),
 lc LowCardinality(String), lcn LowCardinality(Nullable(String)), n Nullable(Int32), nu Nullable(UInt64),
 arr Array(Int32), arrn Array(Nullable(String)), arr2 Array(Array(UInt8)), m Map(String, UInt64),
 mn Map(String, Nullable(Float64)), t Tuple(Int32, String), tn Tuple(a Int32, b Nullable(String)),
 ip4 IPv4, ip6 IPv6, j JSON, saf SimpleAggregateFunction(max, UInt64)
"""

ROW1 = f"""(1, '{T0}', -128, -32768, -2147483648, -9223372036854775808, 255, 65535, 4294967295,
 9223372036854775807, -99999999999999999999999999999999999999, 99999999999999999999999999999999999999, -5, 5,
 1.5, 2.25, 1234567.89, 123456789012.123456, 1234567890123456789012345678.0123456789, true, 'héllo', 'abcd',
 '61f0c404-5cb3-11e7-907b-a6006ad3dba0', '2026-01-02', '1960-05-06', '2026-01-02 03:04:05',
 '2026-01-02 12:00:00', '2026-01-02 03:04:05', '2026-01-02 03:04:05.123456', 'b', 'x', 'lc', NULL, NULL, NULL,
 [1, 2], ['a', NULL], [[1], [2, 3]], {{'k': 18446744073709551}}, {{'z': NULL, 'y': 1.5}}, (1, 'one'), (2, NULL),
 '1.2.3.4', '2001:db8::1', '{{"a": {{"b": 1}}}}', 42)"""

ROW2 = f"""(2, '{T0}', 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, false, '', '\\0\\0\\0\\0',
 '00000000-0000-0000-0000-000000000000', '1970-01-01', '2100-12-31', '1970-01-01 00:00:00', '1970-01-01 09:00:00',
 '1970-01-01 00:00:00', '1970-01-01 00:00:00', 'a', 'x', '', 'n', 7, 18446744073709551615 - 18446744073709551615,
 [], [], [], {{}}, {{}}, (0, ''), (0, 'z'), '0.0.0.0', '::', '{{}}', 0)"""

EXPECTED = {
    1: dict(
        ts=dt.datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC),
        i8=-128,
        i16=-32768,
        i32=-2147483648,
        i64=-9223372036854775808,
        u8=255,
        u16=65535,
        u32=4294967295,
        u64=9223372036854775807,
        i128=Decimal("-99999999999999999999999999999999999999"),
        u128=Decimal("99999999999999999999999999999999999999"),
        i256=Decimal(-5),
        u256=Decimal(5),
        f32=1.5,
        f64=2.25,
        d9=Decimal("1234567.89"),
        d18=Decimal("123456789012.123456"),
        d38=Decimal("1234567890123456789012345678.0123456789"),
        b=True,
        s="héllo",
        fs=b"abcd",
        u=uuid.UUID("61f0c404-5cb3-11e7-907b-a6006ad3dba0"),
        dt=dt.date(2026, 1, 2),
        d32=dt.date(1960, 5, 6),
        dtm=dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        dtm_tz=dt.datetime(2026, 1, 2, 3, 0, tzinfo=UTC),
        dt64_0=dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        dt64_6=dt.datetime(2026, 1, 2, 8, 4, 5, 123456, tzinfo=UTC),
        e8="b",
        e16="x",
        lc="lc",
        lcn=None,
        n=None,
        nu=None,
        arr=[1, 2],
        arrn=["a", None],
        arr2=[[1], [2, 3]],
        m=[("k", 18446744073709551)],
        mn=[("z", None), ("y", 1.5)],
        t={"f1": 1, "f2": "one"},
        tn={"a": 2, "b": None},
        ip4="1.2.3.4",
        ip6="2001:db8::1",
        j='{"a":{"b":1}}',
        saf=42,
    ),
    2: dict(
        i64=0,
        u64=0,
        b=False,
        s="",
        fs=b"\0\0\0\0",
        u=uuid.UUID(int=0),
        dt=dt.date(1970, 1, 1),
        d32=dt.date(2100, 12, 31),
        dtm=dt.datetime(1970, 1, 1, tzinfo=UTC),
        dtm_tz=dt.datetime(1970, 1, 1, tzinfo=UTC),
        e8="a",
        lc="",
        lcn="n",
        n=7,
        nu=0,
        arr=[],
        arrn=[],
        arr2=[],
        m=[],
        mn=[],
        t={"f1": 0, "f2": ""},
        tn={"a": 0, "b": "z"},
        ip4="0.0.0.0",
        ip6="::",
        j="{}",
    ),
}


def _types_table(extra: dict | None = None) -> dict:
    return {
        "source": "types",
        "timestamp_column": "ts",
        "sequence_column": "id",
        "partition_by": "day",
        **(extra or {}),
    }


def test_every_type_round_trips(make_settings, catalog_uri, source_dsn):
    s = make_settings([_types_table()], catalog_uri=catalog_uri, dsn=source_dsn)
    with clickhouse(s) as ch:
        ch.command(f"CREATE TABLE k2.types ({COLUMNS}) ENGINE = MergeTree ORDER BY (ts, id)")
        ch.command(f"INSERT INTO k2.types VALUES {ROW1}, {ROW2}")
    res = run_cycle(s).tables[0]
    assert res.status == "ok", res.error
    rows = {r["id"]: r for r in cold(s, "types").to_pylist()}
    assert set(rows) == {1, 2}
    for rid, expected in EXPECTED.items():
        for col, value in expected.items():
            assert rows[rid][col] == value, f"row {rid} column {col}: {rows[rid][col]!r} != {value!r}"
    schema = sink_for(s).load("types").schema()
    types = {f.name: str(f.field_type) for f in schema.fields}
    assert types["u64"] == "long" and types["u32"] == "long" and types["i128"] == "decimal(38, 0)"
    assert types["u"] == "uuid" and types["fs"] == "fixed[4]" and types["dtm"] == "timestamptz"
    assert not schema.find_field("n").required and schema.find_field("i8").required
    assert not schema.find_field("arrn").field_type.element_required
    assert not schema.find_field("mn").field_type.value_required


def test_uint64_above_long_is_refused_naming_table_column_value_and_fix(make_settings, sqlite_uri):
    s = make_settings([{"source": "big", "timestamp_column": "ts", "sequence_column": "seq"}], catalog_uri=sqlite_uri)
    with clickhouse(s) as ch:
        ch.command("CREATE TABLE k2.big (ts DateTime64(3), seq UInt64, v UInt64) ENGINE = MergeTree ORDER BY (ts, seq)")
        ch.command(
            "INSERT INTO k2.big VALUES ('2026-01-01 00:00:00', 1, 5), ('2026-01-01 00:00:01', 2, 18446744073709551615)"
        )
    res = run_cycle(s).tables[0]
    assert res.status == "failed" and res.error["type"] == "value_out_of_range"
    msg = res.error["message"] + res.error["fix"]
    for part in ("big.v", "18446744073709551615", 'column_types = { v = "decimal(20,0)" }'):
        assert part in msg, msg
    assert cold(s, "big").num_rows == 0  # nothing written, not even the row that fitted
    assert sink_for(s).watermark(sink_for(s).load("big"))[0] is None


def test_uint64_opt_in_decimal(make_settings, sqlite_uri):
    table = {
        "source": "big",
        "timestamp_column": "ts",
        "sequence_column": "seq",
        "column_types": {"v": "decimal(20,0)", "seq": "decimal(20,0)"},
    }
    s = make_settings([table], catalog_uri=sqlite_uri)
    with clickhouse(s) as ch:
        ch.command("CREATE TABLE k2.big (ts DateTime64(3), seq UInt64, v UInt64) ENGINE = MergeTree ORDER BY (ts, seq)")
        ch.command("INSERT INTO k2.big VALUES ('2026-01-01 00:00:00', 18446744073709551614, 18446744073709551615)")
    assert run_cycle(s).tables[0].status == "ok"
    row = cold(s, "big").to_pylist()[0]
    assert row["v"] == Decimal(18446744073709551615) and row["seq"] == Decimal(18446744073709551614)
    wm = sink_for(s).watermark(sink_for(s).load("big"))[0]
    assert wm is not None and wm.seq == 18446744073709551614


@pytest.mark.parametrize(
    "ddl,col,override,expected",
    [
        ("Decimal(76, 10)", "x", "string", "123456789012345678901234567890123456789012345.0123456789"),
        ("Decimal(76, 10)", "x", "double", pytest.approx(1.2345678901234568e44, rel=1e-12)),
        ("DateTime64(9, 'UTC')", "x", "long", 1767236400123456789),
        ("DateTime64(9, 'UTC')", "x", "timestamp", dt.datetime(2026, 1, 1, 3, 0, 0, 123456, tzinfo=UTC)),
    ],
)
def test_lossy_types_refused_by_default_and_mapped_on_opt_in(make_settings, sqlite_uri, ddl, col, override, expected):
    value = (
        "123456789012345678901234567890123456789012345.0123456789"
        if ddl.startswith("Decimal")
        else "2026-01-01 03:00:00.123456789"
    )
    base = {"source": "lossy", "timestamp_column": "ts", "sequence_column": "seq"}
    s = make_settings([base], catalog_uri=sqlite_uri)
    with clickhouse(s) as ch:
        ch.command(
            f"CREATE TABLE k2.lossy (ts DateTime64(3), seq UInt64, x {ddl}) ENGINE = MergeTree ORDER BY (ts, seq)"
        )
        ch.command(f"INSERT INTO k2.lossy VALUES ('2026-01-01 00:00:00', 1, '{value}')")
    refused = run_cycle(s).tables[0]
    assert refused.status == "failed" and refused.error["type"] == "type_refused"
    assert "lossy.x" in refused.error["message"] and f'"{override}"' in refused.error["fix"]
    s = make_settings([{**base, "column_types": {col: override}}], catalog_uri=sqlite_uri)
    assert run_cycle(s).tables[0].status == "ok"
    assert cold(s, "lossy").to_pylist()[0]["x"] == expected


def test_unknown_types_are_refused_by_name():
    with pytest.raises(TypeRefused, match=r"t\.agg: ClickHouse type AggregateFunction\(uniq, UInt64\)"):
        plan_columns("t", [("agg", "AggregateFunction(uniq, UInt64)")], {})
    with pytest.raises(TypeRefused, match="Dynamic"):
        plan_columns("t", [("d", "Array(Dynamic)")], {})


def test_type_parser_handles_nesting_quotes_and_names():
    t = parse("Tuple(`a b` Nullable(String), c Map(String, Array(DateTime64(3, 'Asia/Tokyo'))), Enum8('x,y' = 1))")
    assert t.name == "Tuple" and t.names == ("a b", "c", None)
    assert t.children[0].children[0].name == "String"
    assert t.children[1].children[1].children[0].args == ("3", "'Asia/Tokyo'")
    assert t.children[2].args == ("'x,y' = 1",)


def test_decimals_and_enums_travel_as_integers_and_decode_exactly(make_settings, sqlite_uri, source_dsn):
    """Decimal(P <= 18) crosses as its unscaled integer and an Enum as its number (cheaper than ClickHouse's
    own Arrow conversion); both must decode to exactly what ClickHouse prints, nulls included."""
    s = make_settings(
        [{"source": "wire", "timestamp_column": "ts", "sequence_column": "id"}], catalog_uri=sqlite_uri, dsn=source_dsn
    )
    ddl = (
        "id UInt32, ts DateTime64(3), d4 Decimal(4, 4), d9 Nullable(Decimal(9, 0)), d18 Decimal(18, 18), "
        "d18n Nullable(Decimal64(2)), e Nullable(Enum8('lo' = -128, 'hi' = 127)), "
        "q Enum16('it''s' = -1000, 'a\\\\b' = 0, 'c, \\'d\\' = 3' = 30000)"
    )
    rows = (
        "(1, '2026-01-01 00:00:00', -0.9999, 999999999, 0.999999999999999999, -99999999999999.99, 'lo', 'it''s'),"
        "(2, '2026-01-01 00:00:01', 0.0001, NULL, -0.000000000000000001, NULL, NULL, 'a\\\\b'),"
        "(3, '2026-01-01 00:00:02', 0, -999999999, 0, 0.01, 'hi', 'c, \\'d\\' = 3')"
    )
    with clickhouse(s) as ch:
        ch.command(f"CREATE TABLE k2.wire ({ddl}) ENGINE = MergeTree ORDER BY (ts, id)")
        ch.command(f"INSERT INTO k2.wire VALUES {rows}")
        cols = [
            (str(n), str(t))
            for n, t in ch.rows(
                "SELECT name, type FROM system.columns WHERE database = 'k2' AND table = 'wire' ORDER BY position"
            )
        ]
        printed = {
            int(r[0]): r[1:]
            for r in ch.rows(
                "SELECT id, toString(d4), toString(d9), toString(d18), "
                "toString(d18n), toString(e), toString(q) FROM k2.wire"
            )
        }
    plans = {p.name: p for p in plan_columns("k2.wire", cols, {})}
    assert all(plans[c].wire is not None for c in ("d4", "d9", "d18", "d18n", "e", "q"))
    assert run_cycle(s).tables[0].status == "ok"
    got = {r["id"]: r for r in cold(s, "wire").to_pylist()}
    for rid, texts in printed.items():
        for col, text in zip(("d4", "d9", "d18", "d18n", "e", "q"), texts, strict=True):
            value = got[rid][col]
            if value is None or text is None:
                assert value is None and text is None, (rid, col, value, text)
            elif isinstance(value, Decimal):
                assert value == Decimal(text), (rid, col, value, text)
            else:
                assert value == text, (rid, col, value, text)
    assert got[2]["d9"] is None and got[2]["e"] is None and got[3]["q"] == "c, 'd' = 3"
    assert got[1]["d18n"] == Decimal("-99999999999999.99") and got[2]["d18"] == Decimal("-0.000000000000000001")


def test_wire_decoding_of_sliced_chunks_keeps_values_and_nulls():
    from iceberg_offload.engine.wire import Wire

    raw = pa.array([-(10**17), None, 5, 999_999_999_999_999_999, -1], pa.int64())
    chunked = pa.chunked_array([raw.slice(1, 4), raw.slice(0, 1)])  # offsets and nulls in the chunks
    got = Wire(decimal=(18, 2, 64)).decode(chunked).to_pylist()
    assert got == [
        None,
        Decimal("0.05"),
        Decimal("9999999999999999.99"),
        Decimal("-0.01"),
        Decimal("-1000000000000000.00"),
    ]
    small = pa.chunked_array([pa.array([None, -7, 123], pa.int32()).slice(1)])
    assert Wire(decimal=(9, 3, 32)).decode(small).to_pylist() == [Decimal("-0.007"), Decimal("0.123")]
    enum = pa.chunked_array([pa.array([2, None, -1], pa.int8()).slice(1)])
    assert Wire(enum=((-1, "a"), (2, "b"))).decode(enum).to_pylist() == [None, "a"]
    lc = pa.chunked_array([pa.DictionaryArray.from_arrays(pa.array([1, 0, None], pa.int32()), pa.array(["x", "y"]))])
    assert Wire(dictionary=True).decode(lc).to_pylist() == ["y", "x", None]


def test_uint64_becomes_long_without_a_copy_only_when_every_value_fits():
    from iceberg_offload.engine.wire import _uint64_as_long

    raw = pa.array([7, 2**63 - 1, 0, 5], pa.uint64())
    fits = _uint64_as_long(pa.chunked_array([raw.slice(1, 2), raw.slice(3)]))
    assert fits.type == pa.int64() and fits.to_pylist() == [2**63 - 1, 0, 5]
    assert fits.chunk(0).buffers()[1].address == raw.buffers()[1].address  # the same bits, no copy
    for kept in ([2**63, 1], [None, 1]):  # above long, or nulls: left to the checked cast (and its error)
        column = pa.chunked_array([pa.array(kept, pa.uint64())])
        assert _uint64_as_long(column).type == pa.uint64()
