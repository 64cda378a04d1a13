"""Text Generation Inference's API (/generate, /generate_stream, /info, /tokenize): router, models, stream."""
