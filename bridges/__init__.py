"""The edges of the bus: Django signals in, SSE streams and remote receivers out."""
