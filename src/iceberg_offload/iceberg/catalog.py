"""The Iceberg catalog opened, and what the catalog and the warehouse answer translated into our errors:
a transport failure is CatalogUnavailable, a warehouse that refuses a write (or, an object store, the
credentials) WarehouseError, and a file the catalog lists but the warehouse lacks WarehouseMissing, naming it."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import time
from collections.abc import Iterator, Mapping

from pyiceberg.catalog import Catalog, load_catalog
from pyiceberg.exceptions import CommitFailedException, ForbiddenError, NoSuchTableError, UnauthorizedError

from iceberg_offload.config import CatalogSettings
from iceberg_offload.errors import (
    CatalogUnavailable,
    ConfigError,
    OffloadError,
    WarehouseError,
    WarehouseMissing,
    redact,
)

# A file-system answer that retrying will not change: full, read-only, no permission, not a directory.
_STORAGE_ERRNOS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
    errno.ENOTDIR,
    errno.EISDIR,
    errno.EEXIST,
    errno.ENOENT,
}


def storage_error(exc: BaseException) -> bool:
    if not isinstance(exc, OSError) or isinstance(exc, ConnectionError | TimeoutError):
        return False
    if exc.errno in _STORAGE_ERRNOS:
        return True
    found = re.search(r"\[errno (\d+)\]", str(exc), re.IGNORECASE)  # pyarrow puts the errno in the text
    return found is not None and int(found.group(1)) in _STORAGE_ERRNOS


def missing_file(exc: BaseException) -> str | None:
    """The path of the file a read (or write) did not find, when `exc` says a file is missing; else None.
    pyarrow says `[Errno 2] Failed to open local file '/path'` (no filename attribute); fsspec sets it."""
    if not isinstance(exc, FileNotFoundError) and not (isinstance(exc, OSError) and exc.errno == errno.ENOENT):
        return None
    if exc.filename:
        return str(exc.filename)
    quoted = re.search(r"'([^']+)'", str(exc))
    return quoted.group(1) if quoted else redact(str(exc)).splitlines()[0][:300]


def _file_kind(path: str) -> str:
    name = path.rsplit("/", 1)[-1]
    if name.endswith(".metadata.json"):
        return "the table's metadata file"
    if name.startswith("snap-") and name.endswith(".avro"):
        return "a manifest list"
    if name.endswith(".avro"):
        return "a manifest"
    return "a data file" if name.endswith(".parquet") else "a file"


def warehouse_missing(what: str, path: str, warehouse: str = "") -> WarehouseMissing:
    where = f"[catalog] warehouse ({warehouse})" if warehouse else "[catalog] warehouse"
    return WarehouseMissing(
        f"{what}: the catalog lists {path} ({_file_kind(path)}), but the warehouse does not have it",
        f"check that {where} is the right path, mount or bucket, or restore the file from "
        f"backup; if it is gone for good: docs/runbooks/warehouse-lost.md",
    )


@contextlib.contextmanager
def warehouse_reads(what: str, warehouse: str = "") -> Iterator[None]:
    """A file the catalog or a snapshot names but the warehouse lacks becomes WarehouseMissing, naming it."""
    try:
        yield
    except OSError as exc:
        path = missing_file(exc)
        if path is None:
            raise
        raise warehouse_missing(what, path, warehouse) from exc


# What an object store answers when the credentials are wrong or may not do this (pyarrow's and botocore's words).
_DENIED = re.compile(
    r"ACCESS_DENIED|AccessDenied|InvalidAccessKeyId|SignatureDoesNotMatch|InvalidToken|ExpiredToken"
    r"|HTTP response code: 403|\b403\b.{0,20}Forbidden"
)


def access_denied(exc: BaseException) -> bool:
    """The warehouse (an object store) refused the request: wrong, expired or insufficient credentials."""
    return isinstance(exc, OSError) and _DENIED.search(str(exc)) is not None


_CATALOG_DENIED = {
    "AccessDenied",
    "AccessDeniedException",
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "InvalidSignatureException",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "ExpiredTokenException",
}


def catalog_denied(exc: BaseException) -> bool:
    """The catalog refused the credentials: an AWS API's error code (Glue), or a REST catalog's 401/403."""
    if isinstance(exc, ForbiddenError | UnauthorizedError):
        return True
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return False
    status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
    return (response.get("Error") or {}).get("Code", "") in _CATALOG_DENIED or status in (401, 403)


def warehouse_denied(what: str, warehouse: str, exc: BaseException) -> WarehouseError:
    where = f"[catalog] warehouse ({warehouse})" if warehouse else "[catalog] warehouse"
    return WarehouseError(
        f"{what}: the warehouse refused access: {redact(str(exc)).splitlines()[0][:300]}",
        f"check the S3 credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN or the instance "
        f"role in the environment, or s3.* keys in [catalog] properties) and that they may read and write {where}",
    )


def warehouse_error(what: str, warehouse: str, exc: BaseException) -> WarehouseError:
    return WarehouseError(
        f"{what}: cannot write to the warehouse: {redact(str(exc)).splitlines()[0][:300]}; nothing was committed",
        f"free space or make [catalog] warehouse ({warehouse}) a writable directory, then run again",
    )


@contextlib.contextmanager
def catalog_errors(what: str, warehouse: str = "") -> Iterator[None]:
    """Translate catalog-transport failures into CatalogUnavailable, and a warehouse that refuses a write
    into WarehouseError; our own errors pass through."""
    try:
        yield
    except OffloadError:
        raise
    except (NoSuchTableError, CommitFailedException):
        raise
    except Exception as exc:
        if (path := missing_file(exc)) is not None:
            raise warehouse_missing(what, path, warehouse) from exc
        if warehouse and storage_error(exc):
            raise warehouse_error(what, warehouse, exc) from exc
        if access_denied(exc):  # terminal: retrying sends the same credentials
            raise warehouse_denied(what, warehouse, exc) from exc
        if catalog_denied(exc):
            raise ConfigError(
                f"Iceberg catalog refused access while {what}: {redact(str(exc)).splitlines()[0][:300]}",
                "check the catalog's credentials (Glue: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or glue.* keys in "
                "[catalog] properties, allowed glue:GetTable, CreateTable, UpdateTable, GetDatabase, CreateDatabase; "
                "REST: credential or token)",
            ) from exc
        raise CatalogUnavailable(
            f"Iceberg catalog failed while {what}: {redact(str(exc)).splitlines()[0][:300]}",
            "check that the catalog is reachable and [catalog] uri is right",
        ) from exc


def s3_region(settings: CatalogSettings, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """`s3.region` for an s3:// warehouse whose properties name no region: the environment's (AWS_REGION,
    AWS_DEFAULT_REGION, as the AWS SDKs read it), else us-east-1 when `s3.endpoint` names an S3-compatible
    store. Without a region pyiceberg asks AWS where the bucket is, per bucket and process: seconds, a wrong
    answer for a bucket that is not on AWS, or none at all where AWS is unreachable. On AWS without an
    environment region, pyiceberg still asks."""
    props = settings.properties
    environ: Mapping[str, str] = os.environ if env is None else env
    if not settings.warehouse.startswith(("s3://", "s3a://")) or props.get("s3.region") or props.get("client.region"):
        return {}
    region = environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION")
    if region:
        return {"s3.region": region}
    return {"s3.region": "us-east-1"} if props.get("s3.endpoint") else {}


def glue_region(settings: CatalogSettings, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """`glue.region` for a Glue catalog whose properties name none: the environment's (AWS_REGION,
    AWS_DEFAULT_REGION; botocore itself reads only the latter), else us-east-1 when `glue.endpoint` names a
    Glue-compatible API. Neither: a config error that names the fix (botocore would say only "You must
    specify a region")."""
    props = settings.properties
    environ: Mapping[str, str] = os.environ if env is None else env
    if settings.type != "glue" or props.get("glue.region") or props.get("client.region"):
        return {}
    region = environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION")
    if region:
        return {"glue.region": region}
    if props.get("glue.endpoint"):
        return {"glue.region": "us-east-1"}
    raise ConfigError(
        "the Glue catalog has no region", "set [catalog] properties glue.region (or AWS_REGION), e.g. eu-west-1"
    )


def open_catalog(settings: CatalogSettings) -> Catalog:
    props = {
        "type": settings.type,
        "uri": settings.uri,
        "warehouse": settings.warehouse,
        **s3_region(settings),
        **glue_region(settings),
        **settings.properties,
    }
    if settings.uri.startswith("sqlite:////"):  # the embedded default: make its folder on first use
        os.makedirs(os.path.dirname(settings.uri[len("sqlite:///") :]), exist_ok=True)
    with catalog_errors("connecting"):
        for attempt in range(5):
            try:
                return load_catalog(settings.name, **props)
            except Exception as exc:
                if "already exists" not in str(exc) or attempt == 4:
                    raise
                time.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")
