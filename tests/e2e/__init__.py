"""End-to-end tests: the real embedded model, live servers and the real clients."""
