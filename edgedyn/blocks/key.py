"""The typed key of one latency-table entry: a fused block at given channel counts."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

OPS = ("conv", "add", "maxpool", "avgpool", "gap", "linear", "reorder", "reorder_in")
ACTS = ("none", "relu", "relu6")


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

    @property
    def nchwc_block(self) -> int:
        """The channel block of an NCHWc key (0 for plain keys)."""
        return int(self.layout[5:]) if self.layout.startswith("nchwc") else 0

    @property
    def out_hw(self) -> tuple[int, int]:
        if self.op in ("gap", "linear"):
            return (1, 1)
        if self.op in ("add", "reorder", "reorder_in"):
            return (self.in_h, self.in_w)
        return (
            (self.in_h + 2 * self.padding - self.kernel) // self.stride + 1,
            (self.in_w + 2 * self.padding - self.kernel) // self.stride + 1,
        )

    def macs(self) -> int:
        oh, ow = self.out_hw
        if self.op == "conv":
            per = self.kernel * self.kernel * (1 if self.depthwise else self.c_in)
            return self.batch * oh * ow * per * self.c_out
        if self.op == "linear":
            return self.batch * self.c_in * self.c_out
        return self.batch * self.c_in * self.in_h * self.in_w  # element-wise / pooling work

    def to_str(self) -> str:
        """Stable text form, used as the JSON key."""
        return "|".join(f"{f.name}={_fmt(getattr(self, f.name))}" for f in fields(self))

    @classmethod
    def from_str(cls, text: str) -> BlockKey:
        kv = dict(part.split("=", 1) for part in text.split("|"))
        typed: dict[str, Any] = {}
        for f in fields(cls):
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


def _fmt(v: object) -> str:
    return str(int(v)) if isinstance(v, bool) else str(v)
