"""Unstructured and N:M sparsity, and sparse-initializer storage. Imports only ``onnxprune.core``."""
