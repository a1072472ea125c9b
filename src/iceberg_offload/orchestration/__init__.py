"""Prefect: the flows and their deployments, REST reads (prefect_api), what cycles report (artifacts,
run_totals), and the native stack's supervisor. Below this layer nothing imports Prefect."""
