"""Snapshot expiry: old snapshots dropped from the metadata, never the chain from the current snapshot back
to the one that carries the watermark (the watermark is read by walking that chain). It commits with a
compare-and-swap on the current snapshot like every other writer. The files only those snapshots referenced
stay on storage until `orphans` (orphans.py) deletes them.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from pyiceberg.exceptions import CommitFailedException
from pyiceberg.table import Table
from pyiceberg.table.refs import MAIN_BRANCH
from pyiceberg.table.update import AssertRefSnapshotId
from pyiceberg.table.update.snapshot import ExpireSnapshots

from iceberg_offload.config import Settings, TableSettings
from iceberg_offload.errors import CommitConflict
from iceberg_offload.iceberg.cas import CasTransaction
from iceberg_offload.iceberg.catalog import catalog_errors
from iceberg_offload.iceberg.sink import Sink
from iceberg_offload.times import utc


@dataclass
class ExpireResult:
    table: str
    applied: bool
    status: str = "ok"  # ok | nothing_to_do | no_table
    snapshots_before: int = 0
    snapshots_after: int = 0
    expired: list[int] = field(default_factory=list)
    expire_before: str = ""
    watermark_snapshot_id: int | None = None
    kept_for_watermark: int = 0
    """Snapshots kept only because the chain from the head to the watermark snapshot runs through them."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _ancestry(table: Table, snapshot_id: int | None) -> list[int]:
    out, meta = [], table.metadata
    snap = meta.snapshot_by_id(snapshot_id) if snapshot_id is not None else None
    while snap is not None:
        out.append(snap.snapshot_id)
        snap = meta.snapshot_by_id(snap.parent_snapshot_id) if snap.parent_snapshot_id is not None else None
    return out


def expire(
    settings: Settings,
    cfg: TableSettings,
    sink: Sink,
    apply: bool,
    older_than_seconds: float = 7 * 86400,
    keep_last: int = 10,
    now_ms: int | None = None,
) -> ExpireResult:
    """Expire snapshots older than `older_than_seconds`, keeping the newest `keep_last` of the main branch
    (at least the current one) and every snapshot from the head down to the one holding the watermark.
    Only the oldest end of the main chain is cut, so the chain the watermark is read from stays whole;
    snapshots no branch or tag reaches are expired by age alone."""
    result = ExpireResult(cfg.target, applied=False)
    table = sink.load(cfg.target)
    if table is None:
        result.status = "no_table"
        return result
    meta = table.metadata
    cutoff = (now_ms if now_ms is not None else int(time.time() * 1000)) - int(older_than_seconds * 1000)
    result.expire_before = utc(cutoff * 1_000_000)
    result.snapshots_before = result.snapshots_after = len(meta.snapshots)
    chain = sink.history(table)  # the main branch, newest first
    _, wm_commit = sink.watermark(table)
    keep = max(keep_last, 1)
    if wm_commit is not None:
        result.watermark_snapshot_id = wm_commit.snapshot_id
        need = 1 + next(i for i, c in enumerate(chain) if c.snapshot_id == wm_commit.snapshot_id)
        result.kept_for_watermark = max(0, need - keep)
        keep = max(keep, need)
    cut = len(chain)
    while cut > keep and chain[cut - 1].timestamp_ms < cutoff:
        cut -= 1
    expired = [c.snapshot_id for c in chain[cut:]]
    reachable = {sid for ref in meta.refs.values() for sid in _ancestry(table, ref.snapshot_id)}
    expired += [s.snapshot_id for s in meta.snapshots if s.snapshot_id not in reachable and s.timestamp_ms < cutoff]
    heads = {ref.snapshot_id for ref in meta.refs.values()}  # pyiceberg refuses to expire a branch or tag head
    result.expired = expired = [sid for sid in expired if sid not in heads]
    if not expired:
        result.status = "nothing_to_do"
        return result
    if apply:
        name = ".".join(table.name())
        txn = CasTransaction(table)
        ExpireSnapshots(txn).by_ids(expired).commit()
        # like an offload commit, only onto the head this plan was made from
        head = chain[0].snapshot_id if chain else None
        txn._apply((), (AssertRefSnapshotId(snapshot_id=head, ref=MAIN_BRANCH),))  # type: ignore[call-arg]
        try:
            with catalog_errors(f"expiring snapshots of {name}"):
                new_table = txn.commit_transaction()
        except CommitFailedException as exc:
            raise CommitConflict(
                f"{name}: another writer committed while snapshots were being expired ({exc}); nothing was expired",
                "run the expiry again",
            ) from exc
        result.applied = True
        result.snapshots_after = len(new_table.metadata.snapshots)
    return result
