"""Regenerate every file in ``models/``: trained digits classifiers, narrow torchvision architectures, data.

Why this script exists: onnxprune must be tested on graphs that real exporters write (BatchNormalization
kept, Flatten before Gemm, channel shuffles, dense concats, squeeze-excite, attention), and its accuracy
claims need real held-out data that onnxruntime alone can score. Everything here is small (the whole
folder stays a few MB), seeded and regenerated from scratch by this one script.

It needs the optional ``export`` extra, never the main install or the tests. Its own virtual
environment (git-ignored)::

    python3 -m venv .venv-export && .venv-export/bin/pip install torch==2.14.1 torchvision==0.29.1 \\
        scikit-learn skl2onnx onnx onnxruntime onnxscript

Run from the repository root (``onnxprune`` is imported from the checkout, not installed)::

    .venv-export/bin/python tools/export_models.py                # rewrite models/ and MANIFEST.md
    .venv-export/bin/python tools/export_models.py --out /tmp/m   # elsewhere, e.g. to compare hashes
    .venv-export/bin/python tools/export_models.py --only digits_cnn tv_resnet18

Determinism: every model seeds torch/numpy itself, torch runs single-threaded with
``torch.use_deterministic_algorithms(True)``, scikit-learn uses ``random_state``, and ``.npz`` files are
written with fixed zip timestamps, so two runs with the same package versions give identical bytes
(``models/MANIFEST.md`` lists the sha256 of each file and says what was checked).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import io
import json
import platform
import sys
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from onnxprune.core.io import file_size  # noqa: E402
from onnxprune.core.stats import model_stats  # noqa: E402
from onnxprune.runtime.evaluate import evaluate_accuracy  # noqa: E402

OPSET = 17
SEED = 0
#: Sizes of the fixed digits split (1797 samples in all): test, and calibration drawn from training.
N_TEST = 360
N_CALIB = 256
INSTALL = ("python3 -m venv .venv-export && .venv-export/bin/pip install torch==2.14.1 torchvision==0.29.1 "
           "scikit-learn skl2onnx onnx onnxruntime onnxscript")


# -- deterministic files ----------------------------------------------------------------------------
def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Like ``numpy.savez_compressed`` but byte-reproducible: fixed entry order and zip timestamps."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key in sorted(arrays):
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            payload = io.BytesIO()
            np.lib.format.write_array(payload, np.ascontiguousarray(arrays[key]), allow_pickle=False)
            zf.writestr(info, payload.getvalue())
    path.write_bytes(buf.getvalue())


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- torch helpers ----------------------------------------------------------------------------------
def torch_setup(seed: int) -> None:
    """Seed everything and force single-threaded deterministic kernels (reproducible bytes)."""
    import random

    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)


def export_torch(module: object, example: object, path: Path, *, input_name: str = "input",
                 output_name: str = "logits") -> onnx.ModelProto:
    """Export with the TorchScript exporter (opset 17), keeping BatchNormalization, dynamic batch axis.

    ``training=PRESERVE`` on a module in eval mode skips the exporter's Conv+BN fusion, so the graphs keep
    the BatchNormalization nodes that a real-world export often has (and that the ``bn_scale`` criterion
    reads); ``do_constant_folding`` still folds shape arithmetic.
    """
    import torch

    module.eval()  # type: ignore[attr-defined]
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, (example,), buf, dynamo=False, opset_version=OPSET, do_constant_folding=True,
            training=torch.onnx.TrainingMode.PRESERVE,
            input_names=[input_name], output_names=[output_name],
            dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}},
        )
    model = onnx.load_from_string(buf.getvalue())
    model.producer_name = "pytorch"
    model.doc_string = "exported by tools/export_models.py"
    path.write_bytes(model.SerializeToString())
    return model


def ort_run(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return [np.asarray(v) for v in sess.run(None, feeds)]


def check_against_torch(module: object, path: Path, x: np.ndarray, input_name: str = "input") -> float:
    """Max |ORT - torch| relative to the output's scale, on a batch of 3 (checks the dynamic batch)."""
    import torch

    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    with torch.no_grad():
        ref = module(torch.from_numpy(x)).numpy()  # type: ignore[operator]
    (got,) = ort_run(path, {input_name: x})
    scale = max(float(np.abs(ref).max()), 1e-6)
    rel = float(np.abs(got - ref).max()) / scale
    if got.shape != ref.shape or rel > 1e-4:
        raise SystemExit(f"{path.name}: ORT output differs from torch (shape {got.shape} vs {ref.shape}, "
                         f"max rel diff {rel:.2e}); not writing a broken model")
    return rel


# -- the digits data set ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Digits:
    """scikit-learn's bundled 8x8 digits, scaled to [0, 1], split once with a fixed seed."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_calib: np.ndarray
    y_calib: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def as_images(x: np.ndarray) -> np.ndarray:
    """Flat 64-pixel rows → [N, 1, 8, 8] images (the CNN's input)."""
    return x.reshape(-1, 1, 8, 8)


def as_rows(x: np.ndarray) -> np.ndarray:
    """Flat 64-pixel rows → [N, 8, 8]: 8 tokens of 8 pixels each (the transformer's input)."""
    return x.reshape(-1, 8, 8)


def load_digits_split() -> Digits:
    """Test = 360 held-out samples; calibration = 256 samples of the training split (disjoint from test)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    y = data.target.astype(np.int64)
    order = np.random.default_rng(SEED).permutation(len(y))
    test, train = order[:N_TEST], np.sort(order[N_TEST:])
    calib = np.sort(np.random.default_rng(SEED + 1).choice(train, N_CALIB, replace=False))
    test = np.sort(test)
    return Digits(x[train], y[train], x[calib], y[calib], x[test], y[test])


# -- models -----------------------------------------------------------------------------------------
@dataclass
class Entry:
    """What MANIFEST.md says about one model."""

    name: str
    source: str
    recipe: str
    trained: bool
    input_shape: tuple[int, ...]
    accuracy: dict[str, float | int | None] = field(default_factory=dict)
    torch_accuracy: float | None = None
    ort_vs_source: float | None = None
    data: dict[str, str] = field(default_factory=dict)


def _train(module: object, x: np.ndarray, y: np.ndarray, *, epochs: int, lr: float, batch: int = 64,
           seed: int = SEED, augment: bool = False) -> None:
    """Plain Adam + cosine schedule; seeded shuffles; optional one-pixel shifts for the 8x8 images."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(module.parameters(), lr=lr, weight_decay=1e-4)  # type: ignore[attr-defined]
    steps = epochs * ((len(y) + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    module.train()  # type: ignore[attr-defined]
    for _ in range(epochs):
        perm = torch.randperm(len(yt), generator=gen)
        for i in range(0, len(yt), batch):
            idx = perm[i:i + batch]
            xb = xt[idx]
            if augment:
                dy, dx = (int(v) for v in torch.randint(-1, 2, (2,), generator=gen))
                xb = torch.roll(xb, shifts=(dy, dx), dims=(-2, -1))
            loss = torch.nn.functional.cross_entropy(module(xb), yt[idx])  # type: ignore[operator]
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    module.eval()  # type: ignore[attr-defined]


def _torch_accuracy(module: object, x: np.ndarray, y: np.ndarray) -> float:
    import torch

    with torch.no_grad():
        pred = module(torch.from_numpy(x)).argmax(1).numpy()  # type: ignore[operator]
    return float(np.mean(pred == y))


def build_digits_cnn(out: Path, digits: Digits) -> Entry:
    """Conv+BN+ReLU stem, one residual block, a strided stage, global pool and a Linear head."""
    import torch
    from torch import nn

    torch_setup(SEED)

    def cbr(c_in: int, c_out: int, stride: int = 1, relu: bool = True) -> list[nn.Module]:
        layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out)]
        return layers + ([nn.ReLU()] if relu else [])

    class Residual(nn.Module):
        def __init__(self, c: int) -> None:
            super().__init__()
            self.body = nn.Sequential(*cbr(c, c), *cbr(c, c, relu=False))
            self.relu = nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.relu(x + self.body(x))

    class DigitsCNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(*cbr(1, 32), Residual(32), *cbr(32, 64, stride=2), *cbr(64, 64))
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.head = nn.Linear(64, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(torch.flatten(self.pool(self.features(x)), 1))

    model = DigitsCNN()
    _train(model, as_images(digits.x_train), digits.y_train, epochs=40, lr=1e-2, augment=True)
    path = out / "digits_cnn.onnx"
    export_torch(model, torch.from_numpy(as_images(digits.x_test[:1])), path)
    rel = check_against_torch(model, path, as_images(digits.x_test[:3]))
    entry = Entry("digits_cnn", f"this script (PyTorch {torch.__version__}), class DigitsCNN",
                  "3x3 Conv+BN+ReLU 32 → residual block (2× Conv+BN, Add, ReLU) → Conv+BN+ReLU 64 stride 2 → "
                  "Conv+BN+ReLU 64 → GlobalAveragePool → Flatten → Linear 10; Adam, one-cycle lr 1e-2, "
                  "40 epochs, batch 64, random one-pixel shifts",
                  True, (1, 1, 8, 8), ort_vs_source=rel)
    entry.torch_accuracy = _torch_accuracy(model, as_images(digits.x_test), digits.y_test)
    _write_digits_data(out, entry, "input", as_images(digits.x_test), digits.y_test, as_images(digits.x_calib),
                       digits.y_calib)
    return entry


def build_digits_mlp(out: Path, digits: Digits) -> Entry:
    """scikit-learn MLPClassifier converted by skl2onnx, probabilities as a float tensor (no ZipMap)."""
    import skl2onnx
    import sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.neural_network import MLPClassifier

    clf = MLPClassifier(hidden_layer_sizes=(128, 64), alpha=1e-3, max_iter=400, random_state=SEED)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf.fit(digits.x_train, digits.y_train)
    model = skl2onnx.convert_sklearn(
        clf, "digits_mlp", initial_types=[("input", FloatTensorType([None, 64]))],
        target_opset={"": OPSET, "ai.onnx.ml": 3}, options={id(clf): {"zipmap": False}},
    )
    model.doc_string = "exported by tools/export_models.py"
    for vi in list(model.graph.input) + list(model.graph.output):
        batch_dim = vi.type.tensor_type.shape.dim[0]
        if not batch_dim.dim_param and not batch_dim.dim_value:
            batch_dim.dim_param = "batch"  # skl2onnx leaves the batch dim unnamed
    path = out / "digits_mlp.onnx"
    path.write_bytes(model.SerializeToString())
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    _, probs = ort_run(path, {"input": digits.x_test[:3]})
    rel = float(np.abs(probs - clf.predict_proba(digits.x_test[:3])).max())
    if rel > 1e-4:
        raise SystemExit(f"digits_mlp: ORT probabilities differ from scikit-learn by {rel:.2e}")
    entry = Entry("digits_mlp", f"scikit-learn {sklearn.__version__} MLPClassifier, converted by skl2onnx "
                  f"{skl2onnx.__version__} (options zipmap=False)",
                  "MLPClassifier(hidden_layer_sizes=(128, 64), alpha=1e-3, max_iter=400, random_state=0) on "
                  "the flattened 64-pixel images; outputs `label` (int64) and `probabilities` (float [N,10])",
                  True, (1, 64), ort_vs_source=rel)
    entry.torch_accuracy = float(clf.score(digits.x_test, digits.y_test))
    _write_digits_data(out, entry, "input", digits.x_test, digits.y_test, digits.x_calib, digits.y_calib)
    return entry


def build_digits_transformer(out: Path, digits: Digits) -> Entry:
    """nn.TransformerEncoder (2 layers, d_model 64, FFN 128, batch_first) over the 8 image rows as tokens."""
    import torch
    from torch import nn

    torch_setup(SEED)

    class DigitsTransformer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Linear(8, 64)
            self.pos = nn.Parameter(torch.randn(1, 8, 64) * 0.02)
            layer = nn.TransformerEncoderLayer(64, 4, 128, dropout=0.0, batch_first=True)
            self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
            self.head = nn.Linear(64, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.encoder(self.embed(x) + self.pos).mean(dim=1))

    model = DigitsTransformer()
    _train(model, as_rows(digits.x_train), digits.y_train, epochs=60, lr=3e-3)
    path = out / "digits_transformer.onnx"
    export_torch(model, torch.from_numpy(as_rows(digits.x_test[:1])), path, input_name="tokens")
    rel = check_against_torch(model, path, as_rows(digits.x_test[:3]), input_name="tokens")
    entry = Entry("digits_transformer", f"this script (PyTorch {torch.__version__}), torch.nn.TransformerEncoder",
                  "each image row is a token: Linear 8→64 + learned positions → TransformerEncoder (2 layers, "
                  "d_model 64, 4 heads, FFN 128, ReLU, post-norm, batch_first, dropout 0) → mean over tokens → "
                  "Linear 10; Adam, one-cycle lr 3e-3, 60 epochs, batch 64",
                  True, (1, 8, 8), ort_vs_source=rel)
    entry.torch_accuracy = _torch_accuracy(model, as_rows(digits.x_test), digits.y_test)
    _write_digits_data(out, entry, "tokens", as_rows(digits.x_test), digits.y_test, as_rows(digits.x_calib),
                       digits.y_calib)
    return entry


def _write_digits_data(out: Path, entry: Entry, input_name: str, x_test: np.ndarray, y_test: np.ndarray,
                       x_calib: np.ndarray, y_calib: np.ndarray) -> None:
    """Write ``<name>_test.npz`` / ``<name>_calib.npz`` and score the ONNX model with onnxprune itself."""
    test, calib = out / f"{entry.name}_test.npz", out / f"{entry.name}_calib.npz"
    save_npz(test, {input_name: x_test, "labels": y_test})
    save_npz(calib, {input_name: x_calib, "labels": y_calib})
    entry.data = {"test": test.name, "calib": calib.name}
    result = evaluate_accuracy(out / f"{entry.name}.onnx", test)
    entry.accuracy = {"top1": result.top1, "top5": result.top5, "n": result.n, "output": result.output}
    if entry.torch_accuracy is not None and abs(entry.torch_accuracy - result.top1) > 0.5 / result.n:
        raise SystemExit(f"{entry.name}: onnxruntime accuracy {result.top1} differs from the source framework's "
                         f"{entry.torch_accuracy}")


# -- torchvision architectures, narrowed ----------------------------------------------------------
def _tv_resnet18() -> object:
    from torch import nn
    from torchvision.models.resnet import BasicBlock, ResNet

    class NarrowResNet(ResNet):
        """torchvision's ResNet with widths (8, 16, 32, 64) instead of (64, 128, 256, 512)."""

        def __init__(self, widths: tuple[int, ...], layers: tuple[int, ...], num_classes: int) -> None:
            nn.Module.__init__(self)
            self._norm_layer = nn.BatchNorm2d
            self.inplanes, self.dilation, self.groups, self.base_width = widths[0], 1, 1, 64
            self.conv1 = nn.Conv2d(3, widths[0], kernel_size=7, stride=2, padding=3, bias=False)
            self.bn1 = nn.BatchNorm2d(widths[0])
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
            self.layer1 = self._make_layer(BasicBlock, widths[0], layers[0])
            self.layer2 = self._make_layer(BasicBlock, widths[1], layers[1], stride=2)
            self.layer3 = self._make_layer(BasicBlock, widths[2], layers[2], stride=2)
            self.layer4 = self._make_layer(BasicBlock, widths[3], layers[3], stride=2)
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Linear(widths[3], num_classes)

    return NarrowResNet((8, 16, 32, 64), (2, 2, 2, 2), 10)


def _tv_googlenet() -> object:
    from torch import nn
    from torchvision.models.googlenet import BasicConv2d, GoogLeNet, Inception, InceptionAux

    class EighthConv(BasicConv2d):
        """BasicConv2d at 1/8 of every channel count (the 3 RGB input channels excepted)."""

        def __init__(self, in_channels: int, out_channels: int, **kwargs: object) -> None:
            super().__init__(in_channels if in_channels == 3 else in_channels // 8, out_channels // 8, **kwargs)

    class EighthInception(Inception):
        """Inception whose branches are built from EighthConv (GoogLeNet does not pass its conv block on)."""

        def __init__(self, *channels: int, **kwargs: object) -> None:
            super().__init__(*channels, conv_block=EighthConv)

    model = GoogLeNet(num_classes=10, aux_logits=False, init_weights=True,
                      blocks=[EighthConv, EighthInception, InceptionAux])
    model.fc = nn.Linear(1024 // 8, 10)
    return model


def _tv_squeezenet() -> object:
    from torch import nn
    from torchvision.models.squeezenet import Fire, SqueezeNet

    model = SqueezeNet(version="1_1", num_classes=10)
    q = 4  # every channel count of version 1_1 divided by 4
    model.features = nn.Sequential(
        nn.Conv2d(3, 64 // q, kernel_size=3, stride=2), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),
        Fire(64 // q, 16 // q, 64 // q, 64 // q), Fire(128 // q, 16 // q, 64 // q, 64 // q),
        nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),
        Fire(128 // q, 32 // q, 128 // q, 128 // q), Fire(256 // q, 32 // q, 128 // q, 128 // q),
        nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),
        Fire(256 // q, 48 // q, 192 // q, 192 // q), Fire(384 // q, 48 // q, 192 // q, 192 // q),
        Fire(384 // q, 64 // q, 256 // q, 256 // q), Fire(512 // q, 64 // q, 256 // q, 256 // q),
    )
    final = nn.Conv2d(512 // q, 10, kernel_size=1)
    nn.init.normal_(final.weight, mean=0.0, std=0.01)
    nn.init.constant_(final.bias, 0)
    model.classifier[1] = final
    return model


def _tv_mobilenet_v3_small() -> object:
    from torchvision.models.mobilenetv3 import MobileNetV3, _mobilenet_v3_conf

    setting, last = _mobilenet_v3_conf("mobilenet_v3_small", width_mult=0.25)
    return MobileNetV3(setting, last, num_classes=10)


def _tv_efficientnet_b0() -> object:
    from torchvision.models.efficientnet import EfficientNet, _efficientnet_conf

    setting, last = _efficientnet_conf("efficientnet_b0", width_mult=0.25, depth_mult=0.5)
    return EfficientNet(setting, dropout=0.2, stochastic_depth_prob=0.0, num_classes=10, last_channel=last)


def _tv_regnet() -> object:
    from torchvision.models.regnet import BlockParams, RegNet

    params = BlockParams.from_init_params(depth=22, w_0=8, w_a=6.0, w_m=2.54, group_width=4)
    return RegNet(params, num_classes=10, stem_width=8)


def _tv_convnext() -> object:
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt

    widths = (8, 16, 32, 64)
    setting = [CNBlockConfig(widths[0], widths[1], 3), CNBlockConfig(widths[1], widths[2], 3),
               CNBlockConfig(widths[2], widths[3], 9), CNBlockConfig(widths[3], None, 3)]
    return ConvNeXt(setting, stochastic_depth_prob=0.0, num_classes=10)


def _tv_simple(name: str, **kwargs: object) -> Callable[[], object]:
    def make() -> object:
        import torchvision.models as tvm

        return getattr(tvm, name)(**kwargs)

    return make


#: name → (constructor, input size, how it is narrowed).
TORCHVISION: dict[str, tuple[Callable[[], object], int, str]] = {
    "tv_resnet18": (_tv_resnet18, 32, "ResNet(BasicBlock, [2, 2, 2, 2]) with stage widths (8, 16, 32, 64) "
                    "instead of (64, 128, 256, 512), built from torchvision's ResNet._make_layer"),
    "tv_mobilenet_v2": (_tv_simple("MobileNetV2", width_mult=0.25, num_classes=10), 32,
                        "MobileNetV2(width_mult=0.25)"),
    "tv_mobilenet_v3_small": (_tv_mobilenet_v3_small, 32,
                              "MobileNetV3 with _mobilenet_v3_conf('mobilenet_v3_small', width_mult=0.25)"),
    "tv_efficientnet_b0": (_tv_efficientnet_b0, 32, "EfficientNet with _efficientnet_conf('efficientnet_b0', "
                           "width_mult=0.25, depth_mult=0.5), stochastic depth off"),
    "tv_densenet121": (_tv_simple("DenseNet", growth_rate=4, block_config=(6, 12, 24, 16), num_init_features=8,
                                  bn_size=2, num_classes=10), 32,
                       "DenseNet(growth_rate=4, block_config=(6, 12, 24, 16), num_init_features=8, bn_size=2): "
                       "densenet121's depth, 1/8 of its growth rate"),
    "tv_googlenet": (_tv_googlenet, 32, "GoogLeNet(aux_logits=False) whose BasicConv2d blocks have 1/8 of the "
                     "channels (blocks=[EighthConv, Inception, InceptionAux]), fc 128→10"),
    "tv_shufflenet_v2_x0_5": (_tv_simple("ShuffleNetV2", stages_repeats=[4, 8, 4],
                                         stages_out_channels=[16, 32, 64, 128, 256], num_classes=10), 32,
                              "ShuffleNetV2(stages_repeats=[4, 8, 4], stages_out_channels=[16, 32, 64, 128, 256]) "
                              "(x0_5 has [24, 48, 96, 192, 1024])"),
    "tv_squeezenet1_1": (_tv_squeezenet, 32, "SqueezeNet(version='1_1') whose features are rebuilt from "
                         "torchvision's Fire with 1/4 of every channel count"),
    "tv_regnet_x_400mf": (_tv_regnet, 32, "RegNet(BlockParams.from_init_params(depth=22, w_0=8, w_a=6.0, "
                          "w_m=2.54, group_width=4), stem_width=8): regnet_x_400mf's depth and w_m, "
                          "about 1/4 of its widths, grouped convs kept"),
    "tv_mnasnet0_5": (_tv_simple("MNASNet", alpha=0.25, num_classes=10), 32, "MNASNet(alpha=0.25)"),
    "tv_convnext_tiny": (_tv_convnext, 32, "ConvNeXt with convnext_tiny's depths (3, 3, 9, 3) and widths "
                         "(8, 16, 32, 64) instead of (96, 192, 384, 768), stochastic depth off"),
    "tv_vit_b_16": (_tv_simple("VisionTransformer", image_size=32, patch_size=8, num_layers=4, num_heads=4,
                               hidden_dim=64, mlp_dim=128, num_classes=10), 32,
                    "VisionTransformer(image_size=32, patch_size=8, num_layers=4, num_heads=4, hidden_dim=64, "
                    "mlp_dim=128) (vit_b_16: 224, 16, 12, 12, 768, 3072)"),
}


def randomize_norms(module: object, seed: int) -> None:
    """Give every norm channel, zero-initialized bias and layer scale its own value (seeded).

    Freshly built networks have all-ones norm scales, zero shifts and biases, and ConvNeXt layer scales of
    1e-6, so a pruner that slices such a parameter at the wrong indices would still produce the right
    outputs (and ConvNeXt's blocks would hardly contribute), and the exporter would merge the identical
    tensors into one shared initializer. Distinct values make those bugs visible.
    """
    import torch
    from torch import nn

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():  # type: ignore[attr-defined]
            if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)) and m.weight is not None:
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
        for name, p in module.named_parameters():  # type: ignore[attr-defined]
            if name.endswith("layer_scale"):
                p.copy_(torch.rand(p.shape, generator=gen) * 0.1 + 0.05)
            elif name.endswith("bias") and not torch.any(p):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)


def build_torchvision(out: Path, name: str) -> Entry:
    """Random-init (seeded) narrow torchvision model, exported at a small input size."""
    import torch
    import torchvision

    make, size, recipe = TORCHVISION[name]
    torch_setup(SEED)
    model = make()
    randomize_norms(model, SEED)
    model.eval()  # type: ignore[attr-defined]
    x = np.random.default_rng(SEED).standard_normal((3, 3, size, size)).astype(np.float32)
    path = out / f"{name}.onnx"
    export_torch(model, torch.from_numpy(x[:1]), path)
    rel = check_against_torch(model, path, x)
    return Entry(name, f"torchvision {torchvision.__version__}, class {type(model).__name__}",
                 recipe + f"; random init (torch.manual_seed({SEED})), norm scales, shifts, running "
                 f"statistics, zero biases and layer scales randomized per channel; input 3x{size}x{size}, 10 classes",
                 False, (1, 3, size, size), ort_vs_source=rel)


# -- manifest -------------------------------------------------------------------------------------
def _value_infos(vis: object) -> str:
    parts = []
    for vi in vis:  # type: ignore[attr-defined]
        tt = vi.type.tensor_type
        dims = ",".join(d.dim_param or str(d.dim_value) for d in tt.shape.dim)
        parts.append(f"`{vi.name}` {onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)}[{dims}]")
    return ", ".join(parts)


def describe(out: Path, entry: Entry) -> dict[str, object]:
    """Everything MANIFEST.md lists about a model, measured from the written file."""
    path = out / f"{entry.name}.onnx"
    model = onnx.load(str(path))
    stats = model_stats(model)
    return {
        "file": path.name,
        "sha256": sha256(path),
        "bytes": file_size(path),
        "source": entry.source,
        "recipe": entry.recipe,
        "trained": entry.trained,
        "params": stats.params,
        "macs": stats.macs,
        "ops": stats.op_histogram,
        "opset": {imp.domain or "ai.onnx": int(imp.version) for imp in model.opset_import},
        "inputs": _value_infos(i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}),
        "outputs": _value_infos(model.graph.output),
        "ort_vs_source_rel": entry.ort_vs_source,
        "accuracy": entry.accuracy or None,
        "source_accuracy": entry.torch_accuracy,
        "data": {k: {"file": v, "sha256": sha256(out / v), "bytes": (out / v).stat().st_size}
                 for k, v in entry.data.items()},
    }


def write_manifest(out: Path, info: dict[str, dict[str, object]]) -> None:
    """``manifest.json`` (read by the tests) and ``MANIFEST.md`` (read by people), from the same data."""
    import skl2onnx
    import sklearn
    import torch
    import torchvision

    versions = {"torch": torch.__version__, "torchvision": torchvision.__version__,
                "scikit-learn": sklearn.__version__, "skl2onnx": skl2onnx.__version__,
                "onnx": onnx.__version__, "onnxruntime": ort.__version__, "numpy": np.__version__,
                "python": platform.python_version(), "machine": platform.machine()}
    (out / "manifest.json").write_text(json.dumps({"versions": versions, "models": info}, indent=1,
                                                  sort_keys=True) + "\n")
    total = sum(p.stat().st_size for p in out.iterdir() if p.is_file() and p.suffix in (".onnx", ".npz"))
    lines = [
        "# Sample models",
        "",
        "Generated by `.venv-export/bin/python tools/export_models.py` (do not edit by hand; rerun it). "
        f"Opset {OPSET}, dynamic batch axis `batch`, every model checked with "
        "`onnx.checker` (full check) and run in onnxruntime against its source framework. "
        f"Total size of the `.onnx` and `.npz` files: {total} bytes.",
        "",
        f"Export environment: {', '.join(f'{k} {v}' for k, v in versions.items())}. Install line: `{INSTALL}`.",
        "",
        "Data: scikit-learn's bundled digits (1797 8x8 images, 10 classes) scaled to [0, 1], split once "
        f"with `numpy.random.default_rng({SEED})`: {N_TEST} held-out test samples (`*_test.npz`, never used "
        f"for training), and {N_CALIB} calibration samples drawn from the training split (`*_calib.npz`, "
        "disjoint from test). Each `.npz` holds the model's input under its input name plus `labels`. "
        "Accuracy below is measured on the ONNX model by onnxruntime with `onnxprune eval MODEL --data "
        "MODEL_test.npz` (`onnxprune.runtime.evaluate.evaluate_accuracy`); the source framework's own accuracy on "
        "the same split is shown next to it.",
        "",
        "| model | trained | params | MACs (batch 1) | bytes | input | top-1 (test) |",
        "|---|---|---:|---:|---:|---|---:|",
    ]
    for name, m in info.items():
        acc = m["accuracy"]
        top1 = f"{acc['top1']:.2%} of {acc['n']}" if acc else "—"  # type: ignore[index]
        lines.append(f"| `{name}.onnx` | {'yes' if m['trained'] else 'no'} | {m['params']} | {m['macs']} | "
                     f"{m['bytes']} | {m['inputs']} | {top1} |")
    lines.append("")
    for name, m in info.items():
        lines += [f"## {name}", "",
                  f"- source: {m['source']}", f"- how: {m['recipe']}",
                  f"- file: `{m['file']}`, {m['bytes']} bytes, sha256 `{m['sha256']}`",
                  f"- params: {m['params']}; MACs at batch 1: {m['macs']}",
                  f"- opset: {', '.join(f'{k} {v}' for k, v in m['opset'].items())}",  # type: ignore[attr-defined]
                  f"- inputs: {m['inputs']}; outputs: {m['outputs']}",
                  f"- ops: {', '.join(f'{k}×{v}' for k, v in m['ops'].items())}",  # type: ignore[attr-defined]
                  f"- onnxruntime vs source framework on 3 samples: max abs diff / output scale = "
                  f"{m['ort_vs_source_rel']:.1e}"]
        if m["accuracy"]:
            acc = m["accuracy"]
            top5 = f", top-5 {acc['top5']:.2%}" if acc.get("top5") is not None else ""  # type: ignore[attr-defined]
            lines.append(f"- accuracy (onnxruntime, {acc['n']} test samples, output `{acc['output']}`): "  # type: ignore[index]
                         f"top-1 {acc['top1']:.2%}{top5}; source framework: {m['source_accuracy']:.2%}")  # type: ignore[index]
        for kind, d in m["data"].items():  # type: ignore[attr-defined]
            lines.append(f"- {kind} data: `{d['file']}`, {d['bytes']} bytes, sha256 `{d['sha256']}`")
        lines.append("")
    lines += REPRO_NOTES
    (out / "MANIFEST.md").write_text("\n".join(lines) + "\n")


REPRO_NOTES = [
    "## Reproducibility",
    "",
    "Every model seeds torch and numpy itself (so `--only NAME` gives the same bytes as a full run), "
    "torch trains single-threaded with `torch.use_deterministic_algorithms(True)`, scikit-learn uses "
    "`random_state=0`, and the `.npz` files are written with fixed zip timestamps (numpy's own `savez` "
    "stamps the current time). Check it with:",
    "",
    "```",
    ".venv-export/bin/python tools/export_models.py --out /tmp/models_a",
    ".venv-export/bin/python tools/export_models.py --out /tmp/models_b",
    "(cd /tmp/models_a && sha256sum *) | diff - <(cd /tmp/models_b && sha256sum *)",
    "```",
    "",
    "Checked when these files were made: two full runs into separate folders gave the same sha256 for "
    "every file, and `--only digits_cnn tv_vit_b_16` rebuilt those files byte for byte. "
    "Byte-identical output is only expected with the same package versions (listed above) on the same CPU "
    "architecture: float results of training depend on the torch/numpy build and the CPU's vector "
    "instructions, and a new exporter version may name or order nodes differently.",
]


BUILDERS: dict[str, Callable[..., Entry]] = {
    "digits_cnn": build_digits_cnn,
    "digits_mlp": build_digits_mlp,
    "digits_transformer": build_digits_transformer,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "models"), help="output folder (default: models/)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="rebuild only these models "
                        "(the manifest then keeps the other entries of the existing manifest.json)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = list(BUILDERS) + list(TORCHVISION)
    chosen = args.only or names
    unknown = sorted(set(chosen) - set(names))
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {names}")
    info: dict[str, dict[str, object]] = {}
    foreign: dict[str, dict[str, object]] = {}  # entries another script writes (tools/train_tiny_gpt.py)
    old = out / "manifest.json"
    if old.is_file():
        previous = json.loads(old.read_text())["models"]
        foreign = {k: v for k, v in previous.items() if k not in names}
        if args.only:
            info = previous
    digits = load_digits_split()
    for name in names:
        if name not in chosen:
            continue
        started = _dt.datetime.now()
        entry = BUILDERS[name](out, digits) if name in BUILDERS else build_torchvision(out, name)
        info[name] = describe(out, entry)
        secs = (_dt.datetime.now() - started).total_seconds()
        acc = f", top-1 {entry.accuracy['top1']:.2%}" if entry.accuracy else ""
        print(f"{name}: {info[name]['bytes']} bytes, {info[name]['params']} params{acc} ({secs:.1f} s)")
    info = {**{k: info[k] for k in names if k in info}, **foreign}
    write_manifest(out, info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
