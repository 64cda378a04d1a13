"""The inference engine: queue, continuous-batching scheduler, KV cache, sampling, stops, detokenising. No FastAPI."""
