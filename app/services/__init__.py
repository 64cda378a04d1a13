"""Use cases between HTTP and the engine: starting runs (prompts, chat turns), generation, sessions. No torch."""
