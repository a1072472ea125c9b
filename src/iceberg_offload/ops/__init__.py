"""Operations: status (the read model), the metrics exporter, doctor, recover, and the worker process that
serves Prefect's pool and the metrics beside it."""
