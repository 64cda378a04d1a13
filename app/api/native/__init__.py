"""The native API (/v1/generate, /v1/chat, chat sessions): router, request/response models, SSE encoder."""
