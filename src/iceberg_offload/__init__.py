"""iceberg-offload: copy every ClickHouse row into Apache Iceberg before the TTL deletes it."""

__version__ = "0.1.0"
