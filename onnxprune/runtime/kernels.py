"""The channel alignment a provider's convolution kernels need for their fast path.

Why: onnxruntime's CPU provider runs Conv in a blocked channel layout (NCHWc) whose block is 16 channels on
machines with AVX-512 and 8 on AVX2 ones. A conv whose channels are not a multiple of the block keeps the
plain layout, with layout conversions around it in the model; a layer timed alone pays such conversions at
every width, so it flatters those widths. Measured on this project's AVX-512 machine: the digits CNN ran
1.08x faster with 24 of 32 channels and 2.4x with 16; ResNet-50 pruned at ratio 0.3 (1 thread, load 6-9,
``tools/bench_speed.py --models resnet50 --threads 1 --resnet-runs 5``) reached 1.03 and 0.95 of its MAC-ideal
speedup at batch 1 and 8 with widths rounded to 16, against 0.95 and 0.92 rounded to 8, where the 256- and
512-channel groups keep widths such as 184 and 360 (multiples of 8, not of 16). Other providers get 8.
"""

from __future__ import annotations

import functools

#: Alignment without a blocked layout to aim at (and never less): multiples of 8 suit every SIMD width.
BASE_ALIGNMENT = 8


@functools.lru_cache(maxsize=1)
def _cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def conv_alignment(provider: str = "cpu", flags: frozenset[str] | None = None) -> int:
    """Channels a Conv's width should be a multiple of on ``provider``: 16 on a CPU with AVX-512 (onnxruntime's
    NCHWc block there), else 8. ``flags``: the CPU's feature flags (default: read from ``/proc/cpuinfo``;
    none elsewhere, which gives 8)."""
    if provider != "cpu":
        return BASE_ALIGNMENT
    return 16 if "avx512f" in (_cpu_flags() if flags is None else flags) else BASE_ALIGNMENT
