"""HTTP only: shared dependencies, guard, middleware, SSE, error mapping; one package per protocol. No torch."""
