"""The HTTP layer: one module per surface. Only this layer knows requests, responses and JSON shapes."""
