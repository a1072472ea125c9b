"""The entrypoints of deployments made before the flows moved (`iceberg_offload.flows.offload_main`, ...).

The flows live in `orchestration.flows`; `deploy` points every deployment there. This module keeps a
deployment made earlier running until the next `deploy`.
"""

from iceberg_offload.orchestration.flows import maintenance, offload_main, offload_table_flow

__all__ = ["maintenance", "offload_main", "offload_table_flow"]
