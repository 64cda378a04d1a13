"""Use cases between HTTP and the engine: generation runs, chat turns, sessions. No torch here."""
