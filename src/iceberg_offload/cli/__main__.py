"""`python -m iceberg_offload.cli`: what the supervisor and the tests start."""

from iceberg_offload.cli.main import main

raise SystemExit(main())
