"""The operator's routes: health probes, /status and /metrics."""
