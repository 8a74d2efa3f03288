"""What users read: the Markdown report, plots, progress bars and the ``analyze`` summary. May import
anything of onnxprune below ``pipeline``."""
