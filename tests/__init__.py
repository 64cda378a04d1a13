"""The test suite: unit (no model), api (the app over a scripted fake engine), e2e (the real model)."""
