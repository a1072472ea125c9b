"""The compare-and-swap transaction every commit of ours goes through, and the clean-up of one that did not land.

pyiceberg would rebase a conflicting append onto the new head and retry it, which for an offload appends
the same window twice, so our transaction refuses to rebase and the commit fails instead."""

from __future__ import annotations

import contextlib
import os

from pyiceberg.exceptions import CommitFailedException
from pyiceberg.table import Table, Transaction


class CasTransaction(Transaction):
    """A transaction whose commit never rebases onto a snapshot it did not read."""

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
