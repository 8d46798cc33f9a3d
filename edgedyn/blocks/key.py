"""The typed key of one latency-table entry: a fused block at given channel counts."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

OPS = ("conv", "add", "maxpool", "avgpool", "gap", "linear", "reorder", "reorder_in",
       "act", "scale", "mul", "concat", "layernorm", "layernorm2d", "to_nhwc", "to_nchw", "affine")
ACTS = ("none", "relu", "relu6", "hardswish", "hardsigmoid", "sigmoid", "silu", "gelu")
#: Fields added after tables were first written: left out of the text form at their default,
#: so the keys of older tables (and of models without such blocks) read and print as before.
OPTIONAL = {"group_width": 0, "parts": 1, "kernel_w": 0, "padding_w": -1, "ceil": False}


@dataclass(frozen=True, order=True)
class BlockKey:
    """What a latency-table entry measures. Everything that changes the latency is here."""

    op: str
    c_in: int
    c_out: int
    in_h: int
    in_w: int
    kernel: int = 1
    stride: int = 1
    padding: int = 0
    depthwise: bool = False
    residual: bool = False  # a fused residual add
    act: str = "none"
    batch: int = 1
    precision: str = "fp32"
    layout: str = "plain"  # the activation layout the kernel runs in: "plain" (NCHW) or "nchwc<block>"
    group_width: int = 0  # a grouped conv (not depthwise): input channels per conv group (0: dense)
    parts: int = 1  # a concat: how many tensors it joins
    kernel_w: int = 0  # a non-square kernel (Inception's 1x7): its width; ``kernel`` is its height (0: square)
    padding_w: int = -1  # its width padding; ``padding`` is the height's (-1: the same)
    ceil: bool = False  # a pool whose output size rounds up (``ceil_mode``; GoogLeNet)

    @property
    def kernel_hw(self) -> tuple[int, int]:
        return self.kernel, self.kernel_w or self.kernel

    @property
    def padding_hw(self) -> tuple[int, int]:
        return self.padding, self.padding if self.padding_w < 0 else self.padding_w

    @property
    def nchwc_block(self) -> int:
        """The channel block of an NCHWc key (0 for plain keys)."""
        return int(self.layout[5:]) if self.layout.startswith("nchwc") else 0

    @property
    def in_per_group(self) -> int:
        """Input channels each output channel of a conv reads (1: depthwise)."""
        return 1 if self.depthwise else self.group_width or self.c_in

    @property
    def out_hw(self) -> tuple[int, int]:
        if self.op == "gap":
            return (1, 1)
        if self.op not in ("conv", "maxpool", "avgpool"):  # element-wise, layout, norms; linear per position
            return (self.in_h, self.in_w)
        (kh, kw), (ph, pw) = self.kernel_hw, self.padding_hw
        return (_out_size(self.in_h, kh, ph, self.stride, self.ceil), _out_size(self.in_w, kw, pw, self.stride,
                                                                                self.ceil))

    def macs(self) -> int:
        oh, ow = self.out_hw
        if self.op == "conv":
            return self.batch * oh * ow * self.kernel_hw[0] * self.kernel_hw[1] * self.in_per_group * self.c_out
        if self.op == "linear":  # in_h x in_w positions (1 x 1 after a flatten; H x W channels-last)
            return self.batch * oh * ow * self.c_in * self.c_out
        return self.batch * self.c_in * self.in_h * self.in_w  # element-wise / pooling work

    def to_str(self) -> str:
        """Stable text form, used as the JSON key."""
        return "|".join(f"{f.name}={_fmt(getattr(self, f.name))}" for f in fields(self)
                        if OPTIONAL.get(f.name, _NOTHING) != getattr(self, f.name))

    @classmethod
    def from_str(cls, text: str) -> BlockKey:
        kv = dict(part.split("=", 1) for part in text.split("|"))
        typed: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in kv and f.name in OPTIONAL:
                continue
            if f.name not in kv:
                raise ValueError(f"block key {text!r} lacks {f.name!r}")
            v = kv[f.name]
            typed[f.name] = v if f.type in ("str", str) else (v == "1") if f.type in ("bool", bool) else int(v)
        key = cls(**typed)
        if key.op not in OPS or key.act not in ACTS:
            raise ValueError(f"block key {text!r} has an unknown op or activation")
        if key.layout != "plain" and not (key.layout.startswith("nchwc") and key.layout[5:].isdigit()):
            raise ValueError(f"block key {text!r} has an unknown layout")
        return key

    def with_channels(self, c_in: int, c_out: int) -> BlockKey:
        d = asdict(self)
        d.update(c_in=c_in, c_out=c_out)
        return BlockKey(**d)


_NOTHING = object()


def _out_size(n: int, k: int, p: int, s: int, ceil: bool) -> int:
    """A conv's or pool's output size along one axis, as PyTorch computes it (``ceil_mode`` too:
    rounded up, unless the last window would start in the right padding)."""
    if not ceil:
        return (n + 2 * p - k) // s + 1
    out = -(-(n + 2 * p - k) // s) + 1
    return out - 1 if (out - 1) * s >= n + p else out


def _fmt(v: object) -> str:
    return str(int(v)) if isinstance(v, bool) else str(v)
