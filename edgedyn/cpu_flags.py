"""What a CPU's feature flags (``/proc/cpuinfo``) say about the kernels ONNX Runtime runs on it.

Pure functions of the flag set, so they are tested without the machine; :mod:`edgedyn.device`
reads the flags.
"""

from __future__ import annotations


def isa(flags: set[str]) -> str | None:
    """The widest vector ISA a CPU's flags name (what ONNX Runtime's kernels and channel
    blocks follow): avx512 (avx512f), avx2, avx, sve, neon (asimd), or None."""
    for name, flag in (("avx512", "avx512f"), ("avx2", "avx2"), ("avx", "avx"), ("sve", "sve"), ("neon", "asimd")):
        if flag in flags:
            return name
    return None


def int8_saturates(flags: set[str]) -> bool | None:
    """Whether ONNX Runtime's 8-bit x86 kernels can saturate on this CPU: AVX2 or AVX-512
    without VNNI sum pairs of u8 x s8 products in 16 bits (``vpmaddubsw``), which overflows
    with 8-bit weights; VNNI (``vpdpbusd``) sums in 32 bits. None where the flags say nothing
    (not x86)."""
    if not flags & {"avx2", "avx512f", "avx", "sse4_1"}:
        return None
    return not flags & {"avx512_vnni", "avx_vnni", "amx_int8"}
