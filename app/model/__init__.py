"""The model: loading weights and tokenizer, CPU weight packing, chat formatting, and its life in the server."""
