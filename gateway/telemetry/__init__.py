"""Metric catalog, Prometheus exposition, structured logs."""
