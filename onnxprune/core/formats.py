"""Recognise model files of other frameworks, to tell the user to export them to ONNX first.

Why: onnxprune reads ONNX only; a PyTorch checkpoint or a Keras file passed by mistake otherwise gets a
protobuf parse error that does not say what to do.
"""

from __future__ import annotations

from pathlib import Path

#: suffix -> (what the file is, how to export it to ONNX).
_FOREIGN = {
    ".pt": ("a PyTorch file", "with torch.onnx.export"),
    ".pth": ("a PyTorch file", "with torch.onnx.export"),
    ".ckpt": ("a training checkpoint", "with your framework's exporter, e.g. torch.onnx.export"),
    ".h5": ("a Keras/HDF5 file", "python -m tf2onnx.convert --keras FILE --output model.onnx"),
    ".keras": ("a Keras file", "python -m tf2onnx.convert --keras FILE --output model.onnx"),
    ".pb": ("a TensorFlow graph", "python -m tf2onnx.convert --graphdef FILE ..."),
    ".tflite": ("a TensorFlow Lite file", "python -m tf2onnx.convert --tflite FILE --output model.onnx"),
}


def export_hint(path: str | Path) -> str | None:
    """One sentence telling how to get an ONNX model from ``path``, if it looks like another framework's model.

    Example:
        >>> export_hint("resnet.pth")
        'resnet.pth looks like a PyTorch file, not ONNX: export it to ONNX first, e.g. with torch.onnx.export'
    """
    p = Path(path)
    if p.is_dir() and (p / "saved_model.pb").exists():
        what, how = "a TensorFlow SavedModel folder", "python -m tf2onnx.convert --saved-model DIR --output model.onnx"
    elif p.suffix.lower() in _FOREIGN:
        what, how = _FOREIGN[p.suffix.lower()]
    else:
        return None
    return f"{path} looks like {what}, not ONNX: export it to ONNX first, e.g. {how}"
