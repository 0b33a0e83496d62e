"""Observing requests: the per-request record, token usage, metrics, the request log, traces, the start-up report."""
