"""API tests: the ASGI app with its lifespan run, over a scripted fake engine."""
