"""Whether this CPU computes in bfloat16 natively: the export's default precision and the runner's warning.

A bf16 model runs 2-2.5x faster than fp32 on a CPU with bf16 dot-product instructions (AVX-512
BF16, or AMX), and several times slower on one without, where every bf16 operation is emulated
through fp32 conversions. The export picks bf16 only where the exporting CPU has them, and the
runner checks again where it is served, since the two machines may differ. Read from
/proc/cpuinfo (the kernel's view, the same on every Linux server); elsewhere none are found, so
fp32 is chosen and nothing is claimed.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

__all__ = [
    "NATIVE_BF16_FLAGS",
    "NATIVE_INT8_FLAGS",
    "cpu_flags",
    "emulation_warning",
    "native_bf16_flags",
    "native_int8_flags",
]

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
"""The /proc/cpuinfo flags of the instructions oneDNN uses for bf16 matrix products."""
NATIVE_INT8_FLAGS = ("avx512_vnni", "amx_int8")
"""The flags of the int8 dot-product instructions behind torch._int_mm's fast path on x86."""


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The first processor's flags (every core of a server reports the same), empty where unreadable."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def native_bf16_flags(flags: Iterable[str]) -> tuple[str, ...]:
    """Which of `NATIVE_BF16_FLAGS` are in `flags`; empty: bf16 would be emulated."""
    return _present(NATIVE_BF16_FLAGS, flags)


def native_int8_flags(flags: Iterable[str]) -> tuple[str, ...]:
    """Which of `NATIVE_INT8_FLAGS` are in `flags`; empty: int8 products would run without VNNI."""
    return _present(NATIVE_INT8_FLAGS, flags)


def _present(wanted: tuple[str, ...], flags: Iterable[str]) -> tuple[str, ...]:
    present = set(flags)
    return tuple(flag for flag in wanted if flag in present)


def emulation_warning(weights_dtype: str, flags: Iterable[str]) -> str | None:
    """The warning for bf16 (or int8+bf16) weights on a CPU that would emulate them (None: nothing to say).

    The runner logs it at load and `serve` prints it: the export chose the precision on a machine
    that had the instructions, and the one serving may not."""
    missing = []
    if weights_dtype in ("bfloat16", "int8+bfloat16") and not native_bf16_flags(flags):
        missing.append(f"no bf16 instructions ({', '.join(NATIVE_BF16_FLAGS)})")
    if weights_dtype == "int8+bfloat16" and not native_int8_flags(flags):
        missing.append(f"no int8 dot-product instructions ({', '.join(NATIVE_INT8_FLAGS)})")
    if not missing:
        return None
    return (
        f"the classifier's weights are {weights_dtype} but this CPU has {' and '.join(missing)}: "
        "every batch runs emulated, several times slower than fp32; export again on this machine (the default "
        "picks what it computes natively) or with --dtype fp32"
    )
