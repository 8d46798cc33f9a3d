"""Activation layouts between blocks: when isolated blocks do not simply add up.

Most backends run a sub-net as the sum of its blocks plus fixed overheads (``plain``).
ONNX Runtime on x86 CPUs does not: its graph optimizer moves regular convolutions into a
channel-blocked layout (NCHWc, ``block`` channels per vector: 16 with AVX-512, 8 with
AVX2). Inside a network, blocked tensors flow from conv to conv with no conversion, but a
block measured alone pays a conversion at its input and its output, and its residual add
is not fused. On a small network (resnet20 at 32x32) those conversions are a fifth of
the time, and they fall unevenly on different widths.

:class:`Layout` ``nchwc`` therefore measures every block *in the layout it runs in inside
the network* (ONNX Runtime's own NCHWc kernels, see
:func:`~edgedyn.blocks.models.block_onnx`), and adds explicitly the conversions
(``reorder`` keys) a given sub-net pays. The rules, checked against ONNX Runtime's
optimized graphs in ``tests/test_layout.py``:

- every regular conv runs blocked; its output channels are padded to a multiple of
  ``block``; a conv with fewer than ``block`` input channels reads a plain NCHW tensor,
  any other conv reads a blocked one (padded channels included);
- except a conv that reads at least ``block`` channels but not a multiple of
  :data:`CHANNEL_ALIGN` (4): ONNX Runtime runs it plain, reading and writing NCHW (with
  block 8, 10 and 14 input channels; with block 16 no width of the shipped grids); its
  residual add and activation then run plain after it;
- a residual add and its activation fuse into the conv when the other operand is
  blocked; when it is plain, the conv's output is converted back and the add runs plain;
- max pooling runs blocked when its channels are a multiple of ``block`` and its input
  is blocked, and plain otherwise;
- global pooling and the classifier read plain tensors;
- a tensor is converted once per direction it is needed in (``ReorderOutput``:
  blocked to plain, key op ``reorder``; ``ReorderInput``: plain to blocked, ``reorder_in``).

Networks with other blocks (depthwise or grouped convs, unfused adds, average pooling,
activations other than ReLU / ReLU6, scales, concatenations, LayerNorms, transposes) are
not modelled: their keys stay ``plain`` (blocks measured alone, as ONNX Runtime runs them
alone) and the whole-network calibration absorbs the difference.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .key import BlockKey
from .template import BlockTemplate
from .trace import model_blocks

if TYPE_CHECKING:
    from ..dynamic import DynamicNet, SubnetSpec

_MODELLED_OPS = ("conv", "maxpool", "gap", "linear")
#: ONNX Runtime blocks a conv reading >= ``block`` channels only when their count is a
#: multiple of this (its input reorder gathers four channels at a time; probed on 1.32)
CHANNEL_ALIGN = 4


def runs_plain(c_in: int, block: int) -> bool:
    """Whether ONNX Runtime runs a regular conv reading ``c_in`` channels plain under ``block``."""
    return c_in >= block and c_in % CHANNEL_ALIGN != 0


@dataclass(frozen=True)
class Layout:
    kind: str = "plain"  # "plain" | "nchwc"
    block: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("plain", "nchwc") or (self.kind == "nchwc") != (self.block > 1):
            raise ValueError(f"bad layout {self.kind!r} with block {self.block}")

    @property
    def tag(self) -> str:
        return f"nchwc{self.block}" if self.kind == "nchwc" else "plain"

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "block": self.block}

    @classmethod
    def from_json(cls, obj: Any) -> Layout:
        if obj is None:
            return PLAIN
        return cls(str(obj["kind"]), int(obj.get("block", 0)))

    # -- which blocks are modelled ----------------------------------------------------
    def applies(self, net: DynamicNet) -> bool:
        """Whether this layout's rules cover every block of ``net`` (else its keys stay plain)."""
        if self.kind == "plain":
            return False
        return all(t.op in _MODELLED_OPS and not (t.depthwise or t.group_width or t.in_parts or t.ceil or t.kernel_w)
                   and t.act in ("none", "relu", "relu6") and (t.op != "linear" or (t.in_h, t.in_w) == (1, 1))
                   for t in model_blocks(net))

    # -- the layout simulation ---------------------------------------------------------
    def _simulate(self, blocks: list[BlockTemplate], chans: Callable[[BlockTemplate], tuple[int, int]],
                  batch: int, precision: str, emit_from: int = 0) -> list[BlockKey]:
        """Keys of one sub-net (``chans`` gives each block's channels), conversions included;
        blocks before ``emit_from`` only set the layouts of their outputs."""
        b, tag = self.block, self.tag
        blocked: list[bool] = []  # layout of each block's output tensor
        converted: set[tuple[int, bool]] = set()  # (tensor, to blocked?) already converted
        keys: list[BlockKey] = []

        def need(src: int, want_blocked: bool, c: int, hw: tuple[int, int]) -> None:
            have = blocked[src] if src >= 0 else False
            if have != want_blocked and (src, want_blocked) not in converted:
                converted.add((src, want_blocked))
                keys.append(BlockKey("reorder_in" if want_blocked else "reorder", c, c, *hw,
                                     batch=batch, precision=precision, layout=tag))

        def unfused_add(conv: BlockKey, act: str, back_to_plain: bool) -> None:
            """A conv whose residual add cannot fuse: the conv, (its output back to plain,) the add plain."""
            c, hw = conv.c_out, conv.out_hw
            keys.append(dataclasses.replace(conv, residual=False, act="none"))
            if back_to_plain:
                keys.append(BlockKey("reorder", c, c, *hw, batch=batch, precision=precision, layout=tag))
            keys.append(BlockKey("add", c, c, *hw, act=act, batch=batch, precision=precision))

        for n, t in enumerate(blocks):
            if n == emit_from:
                keys.clear()
            c_in, c_out = chans(t)
            if t.op == "conv" and runs_plain(c_in, b):  # plain NCHW in and out, nothing fused but the activation
                need(t.src, False, c_in, (t.in_h, t.in_w))
                key = t.key_for(c_in, c_out, batch, precision, "plain")
                if t.residual:
                    need(t.res_src, False, c_out, key.out_hw)
                    unfused_add(key, t.act, back_to_plain=False)
                else:
                    keys.append(key)
                blocked.append(False)
            elif t.op == "conv":
                need(t.src, c_in >= b, c_in, (t.in_h, t.in_w))
                res_blocked = t.residual and t.res_src >= 0 and blocked[t.res_src]
                if not t.residual or res_blocked:
                    keys.append(t.key_for(c_in, c_out, batch, precision, tag))
                    blocked.append(True)
                else:  # the residual arrives plain: the add cannot fuse
                    unfused_add(t.key_for(c_in, c_out, batch, precision, tag), t.act, back_to_plain=True)
                    blocked.append(False)
            elif t.op == "maxpool":
                run_blocked = c_in % b == 0 and t.src >= 0 and blocked[t.src]
                need(t.src, run_blocked, c_in, (t.in_h, t.in_w))
                keys.append(t.key_for(c_in, c_out, batch, precision, tag if run_blocked else "plain"))
                blocked.append(run_blocked)
            else:  # gap, linear
                need(t.src, False, c_in, (t.in_h, t.in_w))
                keys.append(t.key_for(c_in, c_out, batch, precision))
                blocked.append(False)
        return keys

    # -- keys -------------------------------------------------------------------------
    def subnet_keys(self, net: DynamicNet, spec: SubnetSpec, batch: int = 1,
                    precision: str = "fp32") -> list[BlockKey]:
        """The sub-net's block keys in execution order, with the layout conversions it pays."""
        blocks = model_blocks(net)
        if not self.applies(net):
            return [t.key(spec, batch, precision) for t in blocks]
        net.check_spec(spec)
        return self._simulate(blocks, lambda t: t.channels(spec), batch, precision)

    def all_keys(self, net: DynamicNet, batch: int = 1, precision: str = "fp32") -> list[BlockKey]:
        """Every key any sub-net of ``net`` can use under this layout (the profiling grid).

        Each block's keys depend only on its own channels and on whether its input and
        residual tensors arrive blocked; so every block is simulated at each of its channel
        pairs in a context offering each arrival layout that can occur for it.
        """
        blocks = model_blocks(net)
        if not self.applies(net):
            return _grid(net, blocks, batch, precision)
        may = self._may_arrive(net, blocks)
        keys: dict[BlockKey, None] = {}
        for t in blocks:
            for ci in t.in_widths(net):
                for co in t.out_widths(net):
                    for src_blocked in may[t.src]:
                        for res_blocked in (may[t.res_src] if t.residual else (True,)):
                            ctx = self._context(t, src_blocked, res_blocked)
                            keys.update(dict.fromkeys(self._simulate(ctx, _fixed(ci, co), batch, precision,
                                                                     emit_from=len(ctx) - 1)))
        return list(keys)

    def _may_arrive(self, net: DynamicNet, blocks: list[BlockTemplate]) -> dict[int, tuple[bool, ...]]:
        """For each tensor (block index; -1 the input), the layouts it can have in some sub-net."""
        b = self.block
        may: dict[int, tuple[bool, ...]] = {-1: (False,)}
        for i, t in enumerate(blocks):
            if t.op == "conv":
                widths = t.in_widths(net)
                can_block = any(not runs_plain(c, b) for c in widths)
                can_plain = (any(runs_plain(c, b) for c in widths)
                             or (t.residual and can_block and False in may[t.res_src]))
                may[i] = tuple(sorted(({True} if can_block else set()) | ({False} if can_plain else set())))
            elif t.op == "maxpool":
                can_block = True in may[t.src] and any(c % b == 0 for c in t.in_widths(net))
                can_plain = False in may[t.src] or any(c % b for c in t.in_widths(net))
                may[i] = tuple(sorted(({True} if can_block else set()) | ({False} if can_plain else set())))
            else:
                may[i] = (False,)
        return may

    @staticmethod
    def _context(t: BlockTemplate, src_blocked: bool, res_blocked: bool) -> list[BlockTemplate]:
        """``t`` after stand-in producers of its input (and residual) in the given layouts."""
        def producer(is_blocked: bool) -> BlockTemplate:
            # a conv yields a blocked tensor, global pooling a plain one; their own keys are dropped
            return BlockTemplate("ctx", "conv" if is_blocked else "gap", None, None, 1, 1, 1, 1)
        ctx = [producer(src_blocked), producer(res_blocked)]
        return ctx + [dataclasses.replace(t, src=0, res_src=1 if t.residual else -1)]


PLAIN = Layout()


def as_run(key: BlockKey) -> BlockKey:
    """The computation ONNX Runtime actually runs for ``key``.

    A blocked conv computes its output channels padded to the block, and reads its input
    padded too when the input arrives blocked (``c_in >= block``); keys with the same
    ``as_run`` run the same kernels on the same shapes (e.g. 16 -> 8 and 16 -> 16 channels
    with block 16). Every other key runs as it is.
    """
    b = key.nchwc_block
    if key.op != "conv" or not b or key.depthwise:
        return key
    return key.with_channels(key.c_in if key.c_in < b else pad_channels(key.c_in, b), pad_channels(key.c_out, b))


def pad_channels(c: int, block: int) -> int:
    """``c`` channels padded to a multiple of the layout's channel block (0: no blocking)."""
    return -(-c // block) * block if block else c


def _grid(net: DynamicNet, blocks: list[BlockTemplate], batch: int, precision: str) -> list[BlockKey]:
    keys: dict[BlockKey, None] = {}
    for t in blocks:
        for ci in t.in_widths(net):
            for co in t.out_widths(net):
                keys[t.key_for(ci, co, batch, precision)] = None
    return list(keys)


def _fixed(c_in: int, c_out: int) -> Callable[[BlockTemplate], tuple[int, int]]:
    """Channels of every block: ``(c_in, c_out)`` (one block simulated at one channel pair)."""
    return lambda t: (c_in, c_out)
