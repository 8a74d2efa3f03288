"""Model handling every mode needs: load/save (atomic, external data), the name-keyed IR, shape inference
and folding, weight discovery, statistics and the exception hierarchy. Imports nothing else of onnxprune."""
