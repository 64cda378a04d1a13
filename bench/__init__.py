"""`make bench`: the server under concurrent streamed clients, and the batching mechanisms in-process."""
