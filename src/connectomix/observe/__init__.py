"""Observability: Prometheus metrics (process and workspace), the exporter, the Grafana dashboard."""
