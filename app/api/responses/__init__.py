"""The OpenAI Responses API (/v1/responses): router, request/response models, event stream."""
