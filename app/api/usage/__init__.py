"""Usage per API key: GET /v1/usage."""
