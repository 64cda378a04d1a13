"""Cross-cutting concerns: config, errors, logging, request ids."""
