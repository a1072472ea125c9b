"""Table maintenance: the daily run (daily) of reconcile, compaction, snapshot expiry and orphan removal;
the hot + cold view in ClickHouse."""
