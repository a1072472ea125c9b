#!/usr/bin/env sh
# Writes deploy/secrets/: one random password per service and the files built from them (the worker's
# ClickHouse DSN and catalog URI, the catalog's S3 properties, ClickHouse's user). docker-compose.yml mounts
# them as compose secrets (/run/secrets/<name>); no password is in an environment variable, so
# `docker inspect` shows none. Run once before the first `docker-compose up`; an existing folder is kept
# (delete it to rotate every password, then recreate the volumes: Postgres keeps its first password).
#   usage: deploy/make-secrets.sh [FOLDER]    (default: deploy/secrets beside this script)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/secrets}
if [ -e "$out/postgres_password" ]; then
  echo "kept $out (delete it to make new passwords)"
  exit 0
fi
umask 077
mkdir -p "$out"
# users (not secret) come from deploy/.env; the defaults match .env.example
[ -f "$here/.env" ] && . "$here/.env"
pg_user=${POSTGRES_USER:-prefect}
ch_user=${CLICKHOUSE_USER:-offload}
s3_key=${S3_ACCESS_KEY_ID:-offload}
pw() { python3 -c 'import secrets; print(secrets.token_urlsafe(24))'; }
pg=$(pw); ch=$(pw); s3=$(pw); prefect=$(pw); grafana=$(pw)
printf '%s' "$pg" > "$out/postgres_password"
printf '%s' "$ch" > "$out/clickhouse_password"
printf '%s' "$s3" > "$out/s3_secret_access_key"
printf '%s' "admin:$prefect" > "$out/prefect_auth_string"
printf '%s' "$grafana" > "$out/grafana_admin_password"
printf '%s' "postgresql+asyncpg://$pg_user:$pg@k2-prefect-db:5432/prefect" > "$out/prefect_database_url"
printf '%s' "http://$ch_user:$ch@clickhouse:8123/" > "$out/source_dsn"
printf '%s' "postgresql+psycopg2://$pg_user:$pg@k2-prefect-db:5432/iceberg_catalog" > "$out/catalog_uri"
printf '{"s3.endpoint": "http://minio:9000", "s3.access-key-id": "%s", "s3.secret-access-key": "%s", "s3.region": "us-east-1"}' \
  "$s3_key" "$s3" > "$out/catalog_properties"
hash=$(printf '%s' "$ch" | python3 -c 'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())')
cat > "$out/clickhouse_user.xml" <<XML
<clickhouse>
  <users>
    <$ch_user>
      <password_sha256_hex>$hash</password_sha256_hex>
      <networks><ip>::/0</ip></networks>
      <profile>default</profile>
      <quota>default</quota>
      <access_management>1</access_management>
    </$ch_user>
  </users>
</clickhouse>
XML
chmod 644 "$out"/*  # read by the containers' own users (postgres, clickhouse, grafana, offload)
echo "wrote $out; next: docker-compose -f deploy/docker-compose.yml --env-file deploy/.env up -d"
