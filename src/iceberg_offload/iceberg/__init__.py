"""The Iceberg side: the catalog and the compare-and-swap commit (sink), Parquet data files. Imports the
ClickHouse side only for the window's key and time helpers."""
