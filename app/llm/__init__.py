"""Model side: loading, the inference engine, decoding, chat formatting. No FastAPI here."""
