"""Cross-cutting: config, domain errors, JSON logs, metrics, request ids, API keys, rate limits, cache, PII."""
