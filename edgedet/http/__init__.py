"""The optional HTTP endpoint: Prometheus metrics, the stats and info messages as JSON, and a live view."""
