"""The ClickHouse side: the client (embedded chdb or a server over HTTP), SQL quoting, the type-name
parser, TTL rules, and the watermark window's SQL. Imports only the package root (errors, config)."""
