"""Running models in onnxruntime: sessions and providers, input feeds, validation, benchmarks, accuracy.

Importing this package does not import onnxruntime; its modules do. Imports only ``onnxprune.core``."""
