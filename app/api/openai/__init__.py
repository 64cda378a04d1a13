"""The OpenAI Chat Completions, Completions and Models API: router, models, response and chunk builders, stream."""
