"""Unit tests: one module at a time, no model and no server."""
