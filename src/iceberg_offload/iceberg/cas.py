"""The compare-and-swap transaction every commit of ours goes through, and the clean-up of one that did not land.

pyiceberg would rebase a conflicting append onto the new head and retry it, which for an offload appends
the same window twice, so our transaction refuses to rebase and the commit fails instead."""

from __future__ import annotations

import contextlib
import os

from pyiceberg.exceptions import CommitFailedException
from pyiceberg.table import Table, Transaction
from pyiceberg.table.metadata import TableMetadata
from pyiceberg.table.update import TableUpdate, update_table_metadata


class CasTransaction(Transaction):
    """A transaction whose commit never rebases onto a snapshot it did not read."""

    _built: tuple[TableMetadata, tuple[TableUpdate, ...], TableMetadata] | None = None

    @property
    def table_metadata(self) -> TableMetadata:
        """The metadata with this transaction's updates applied, built once per change. pyiceberg rebuilds
        it, a deep copy of the whole metadata, on every read of this property (~17 reads per append): each
        copy costs O(snapshots), so a commit on a table with a week of */15 snapshots took seconds
        (docs/benchmarks.md "Scale in history"). The same base metadata and updates give the same result,
        and no updates give the table's own (frozen) metadata, as `Table.metadata` hands it to every reader."""
        if not self._updates:
            return self._table.metadata
        base, updates, built = self._built or (None, None, None)
        if built is None or base is not self._table.metadata or updates is not self._updates:
            built = update_table_metadata(self._table.metadata, self._updates)
            self._built = (self._table.metadata, self._updates, built)
        return built

    def _rebuild_snapshot_updates(self) -> None:
        raise CommitFailedException("the table changed after the watermark was read")


def discard_files(table: Table, paths: list[str], commit_uuid: str = "") -> None:
    """Delete the files of a commit that did not land: the data files it wrote and, when the warehouse is
    local, every file named with its commit uuid (a half-written data file, manifests, manifest list)."""
    for path in paths:
        with contextlib.suppress(Exception):
            table.io.delete(path)
    location = table.location()
    if not commit_uuid or not location.startswith(("file://", "/")):
        return
    root = location.removeprefix("file://")
    with contextlib.suppress(OSError):
        for folder, _dirs, files in os.walk(root):
            for name in files:
                if commit_uuid in name:
                    with contextlib.suppress(OSError):
                        os.remove(os.path.join(folder, name))
