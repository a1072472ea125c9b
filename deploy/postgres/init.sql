-- The Iceberg catalog lives beside Prefect's database in the same Postgres.
CREATE DATABASE iceberg_catalog;
