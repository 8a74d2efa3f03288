"""Structured pruning: channel axes and index maps, op rules, the dependency graph, importance criteria,
plans, surgery and the equivalence oracle. Imports only ``onnxprune.core``."""
