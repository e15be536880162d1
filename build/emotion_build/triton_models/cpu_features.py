"""Whether this CPU computes the classifier's precision natively: the export's default and the runner's check.

A bf16 model runs 2-2.5x faster than fp32 on a CPU with bf16 dot-product instructions (AVX-512
BF16, or AMX), and several times slower on one without, where every bf16 operation is emulated
through fp32 conversions: slow, but right. int8 products are different: without int8 dot-product
instructions (VNNI, AMX) oneDNN multiplies int8 through 16-bit pair sums that saturate, and
`torch._int_mm` answers wrong sums. So the export picks a precision from the exporting CPU's
flags, and where the model is served the runner checks again: bf16 by the flags, int8 by running
each int8 layer's own check against the exact answer (`check_int8_products`), since the two
machines may differ. Flags come from /proc/cpuinfo (the kernel's view, the same on every Linux
server), less what `ONEDNN_MAX_CPU_ISA` keeps oneDNN from using; elsewhere none are found, so fp32
is chosen and nothing is claimed.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "INT8_MODULE",
    "NATIVE_BF16_FLAGS",
    "NATIVE_INT8_FLAGS",
    "check_int8_products",
    "cpu_flags",
    "emulation_warning",
    "int8_layers",
    "native_bf16_flags",
    "native_int8_flags",
    "refuse_int8_off_cpu",
]

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
"""The /proc/cpuinfo flags of the instructions oneDNN uses for bf16 matrix products."""
NATIVE_INT8_FLAGS = ("avx512_vnni", "amx_int8")
"""The flags of the int8 dot-product instructions behind torch._int_mm's exact fast path on x86."""
INT8_MODULE = "Int8Linear"
"""The class name of the build's int8 layers (int8_products.py), as a loaded TorchScript file keeps it."""

_ISA_CAPS: dict[str, frozenset[str]] = {
    **dict.fromkeys(("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE"), frozenset()),
    "AVX512_CORE_VNNI": frozenset({"avx512_vnni"}),
    **dict.fromkeys(("AVX512_CORE_BF16", "AVX512_CORE_FP16"), frozenset({"avx512_vnni", "avx512_bf16"})),
}
"""What each `ONEDNN_MAX_CPU_ISA` cap leaves of NATIVE_*_FLAGS (oneDNN's names; AMX and ALL/DEFAULT: all)."""


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo"), environ: Mapping[str, str] | None = None) -> frozenset[str]:
    """The first processor's flags (every core of a server reports the same), empty where unreadable,
    without the native bf16/int8 flags that `ONEDNN_MAX_CPU_ISA` forbids oneDNN to use."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    flags: frozenset[str] = frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags = frozenset(value.split())
            break
    cap = _ISA_CAPS.get((os.environ if environ is None else environ).get("ONEDNN_MAX_CPU_ISA", "").strip().upper())
    if cap is None:
        return flags
    return frozenset(flag for flag in flags if flag not in NATIVE_BF16_FLAGS + NATIVE_INT8_FLAGS or flag in cap)


def native_bf16_flags(flags: Iterable[str]) -> tuple[str, ...]:
    """Which of `NATIVE_BF16_FLAGS` are in `flags`; empty: bf16 would be emulated."""
    return _present(NATIVE_BF16_FLAGS, flags)


def native_int8_flags(flags: Iterable[str]) -> tuple[str, ...]:
    """Which of `NATIVE_INT8_FLAGS` are in `flags`; empty: int8 products would run without VNNI."""
    return _present(NATIVE_INT8_FLAGS, flags)


def _present(wanted: tuple[str, ...], flags: Iterable[str]) -> tuple[str, ...]:
    present = set(flags)
    return tuple(flag for flag in wanted if flag in present)


def int8_layers(module: Any) -> list[Any]:
    """Every int8 layer of a module (a loaded TorchScript file, or the build's Python module) that can
    check its products; files exported before the check have none (the flags then decide the warning)."""
    return [
        layer
        for _, layer in module.named_modules()
        if getattr(layer, "original_name", type(layer).__name__) == INT8_MODULE and hasattr(layer, "check_products")
    ]


def check_int8_products(module: Any) -> bool | None:
    """Each int8 layer of `module` checks torch._int_mm on this CPU against the exact answer and keeps
    to it or to float32 products from then on: True where every layer found it exact, False where
    some compute in float32, None where the module has no int8 layers."""
    layers = int8_layers(module)
    if not layers:
        return None
    return all([bool(layer.check_products()) for layer in layers])


def refuse_int8_off_cpu(weights_dtype: str, device_type: str) -> None:
    """int8 products exist on the CPU only (and torch._int_mm on CUDA fails a batch of 16 rows or fewer):
    an int8 classifier on another device is refused at load, not on its first short batch."""
    if weights_dtype == "int8+bfloat16" and device_type != "cpu":
        raise ValueError(
            f"this classifier's weights are {weights_dtype}, whose int8 products run on a CPU only, but this "
            f"instance is on {device_type}: keep its instance group KIND_CPU, or export the GPU targets with "
            "--dtype fp16, bf16 or fp32"
        )


def emulation_warning(weights_dtype: str, flags: Iterable[str], *, int8_exact: bool | None = None) -> str | None:
    """The warning for reduced-precision weights this CPU does not compute natively (None: nothing to say).

    `int8_exact` is the int8 layers' own check (check_int8_products) where the caller ran it; without
    it the flags decide. The runner logs it at load and `serve` prints it: the export chose the
    precision on a machine that had the instructions, and the one serving may not."""
    slow = []
    if weights_dtype in ("bfloat16", "int8+bfloat16") and not native_bf16_flags(flags):
        slow.append(f"no bf16 instructions ({', '.join(NATIVE_BF16_FLAGS)}): bf16 runs emulated")
    if weights_dtype == "int8+bfloat16":
        exact = bool(native_int8_flags(flags)) if int8_exact is None else int8_exact
        if not exact:
            slow.append(
                f"no int8 dot-product instructions ({', '.join(NATIVE_INT8_FLAGS)}), whose absence makes "
                "torch._int_mm saturate: the int8 products run as float32 products of the same int8 values"
            )
    if not slow:
        return None
    return (
        f"the classifier's weights are {weights_dtype} but this CPU has {'; and '.join(slow)}. The answers "
        "are those the export gated, several times slower than on a CPU with the instructions; export again on "
        "this machine (the default picks what it computes natively) or with --dtype fp32"
    )
