"""HTTP layer: routers, schemas, dependencies, middleware. No torch here."""
