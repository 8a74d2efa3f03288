"""Command-line interface: ``onnxprune <command> ...`` (see :mod:`onnxprune.cli.main`)."""
