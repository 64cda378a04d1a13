"""LLM FastAPI Service: a self-hosted inference server for Hugging Face causal LMs."""

__version__ = "0.1.0"
