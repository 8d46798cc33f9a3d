"""Describe a model's dynamic structure (the data behind ``edgedyn inspect``).

Besides the coupling groups and the cost of a few sub-nets, it says layer by layer what
edgedyn slices and what it holds at full width (frozen), and why, before any training.
"""

from __future__ import annotations

from typing import Any

from .dynamic import DynamicNet, LayerInfo, SubnetSpec


def _side(net: DynamicNet, group: int | None, parts: tuple, image: bool) -> str:
    if parts:
        return "concat of groups " + "+".join(str(g) for g, _, _ in parts)
    if group is not None:
        return f"group {group}" + (" (frozen)" if net.groups[group].frozen else "")
    return "image" if image else "fixed"


def layer_status(net: DynamicNet, info: LayerInfo) -> dict[str, Any]:
    """What edgedyn does with one layer: ``sliced``, ``frozen`` (with the reason) or ``fixed``."""
    groups = {g for g in (info.in_group, info.out_group) if g is not None}
    groups |= {g for g, _, _ in info.in_parts + info.out_parts}
    frozen = [str(net.groups[g].frozen) for g in sorted(groups) if net.groups[g].frozen]
    searchable = [g for g in groups if not net.groups[g].frozen]
    if info.name == net.classifier:
        status, why = ("sliced" if searchable else "fixed"), "classifier: its outputs are never slimmed"
    elif info.frozen or (frozen and not searchable):
        status, why = "frozen", str(info.frozen or frozen[0])
    elif frozen:
        status, why = "partly frozen", frozen[0]
    else:
        status, why = ("sliced", "") if searchable else ("fixed", "no coupling group")
    image = info.order == 0 or (info.in_group is None and info.in_channels == net.input_shape[1])
    return {"name": info.name, "kind": info.kind + (f" groups={info.groups}" if info.groups > 1 else ""),
            "in": _side(net, info.in_group, info.in_parts, image and not info.tied),
            "out": _side(net, info.out_group, info.out_parts, False), "status": status, "why": why}


def describe(
    model: str,
    *,
    input_size: int | None = None,
    num_classes: int | None = None,
    spec: SubnetSpec | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Coupling groups (layers, channel grid, floor), the layers edgedyn slices or freezes, and
    the cost of full / smallest / ``spec``. ``model`` is a name or ``file.py:function`` reference."""
    net = DynamicNet.from_name(model, num_classes=num_classes, input_size=input_size, **options)
    specs = {"full": net.full_spec(), "min": net.min_spec()}
    if spec is not None:
        specs["spec"] = net.check_spec(spec)
    layers = [layer_status(net, i) for i in sorted(net.layers.values(), key=lambda i: i.order)]
    return {
        "model": net.name,
        "model_sha256": net.model_ref.source_sha256 if net.model_ref else None,
        "input_shape": list(net.input_shape),
        "num_classes": net.num_classes,
        "classifier": net.classifier,
        "signature": net.signature(),
        "groups": [
            {
                "index": g.index,
                "name": g.name,
                "channels": g.channels,
                "grid": list(g.grid),
                "floor": g.floor,
                "unit": g.unit,
                "frozen": g.frozen,
                "layers": [f"{m.layer}:{m.side}" for m in g.members],
            }
            for g in net.groups
        ],
        "layers": layers,
        "counts": {s: sum(1 for x in layers if x["status"] == s)
                   for s in ("sliced", "partly frozen", "frozen", "fixed")},
        "subnets": {k: {"widths": list(s.widths), "macs": net.macs(s), "params": net.params(s)}
                    for k, s in specs.items()},
    }


def format_description(desc: dict[str, Any]) -> str:
    frozen = sum(1 for g in desc["groups"] if g["frozen"])
    lines = [
        f"model {desc['model']}  input {tuple(desc['input_shape'])}  classes {desc['num_classes']}  "
        f"classifier {desc['classifier']} (never slimmed)",
        f"{len(desc['groups'])} coupling groups ({frozen} frozen at full width):",
        f"{'#':>3} {'name':<28} {'ch':>5} {'step':>5} {'floor':>5}  layers",
    ]
    for g in desc["groups"]:
        step = g["grid"][1] - g["grid"][0] if len(g["grid"]) > 1 else g["grid"][0]
        layers = ", ".join(g["layers"])
        if len(layers) > 90:
            layers = layers[:87] + "..."
        mark = "  FROZEN: " + g["frozen"][:100] if g["frozen"] else ""
        lines.append(f"{g['index']:>3} {g['name']:<28} {g['channels']:>5} {step:>5} {g['floor']:>5}  {layers}{mark}")
    lines.append("")
    lines.append("layers: " + ", ".join(f"{n} {s}" for s, n in desc["counts"].items()))
    lines.append(f"{'layer':<40} {'kind':<16} {'in':<22} {'out':<22} status")
    for x in desc["layers"]:
        why = f" ({x['why'][:80]})" if x["why"] else ""
        lines.append(f"{x['name'][:40]:<40} {x['kind']:<16} {x['in'][:22]:<22} {x['out'][:22]:<22} {x['status']}{why}")
    lines.append("")
    lines.append(f"{'sub-net':<8} {'GMACs':>9} {'Mparams':>9}  widths")
    for k, s in desc["subnets"].items():
        lines.append(f"{k:<8} {s['macs'] / 1e9:>9.4f} {s['params'] / 1e6:>9.4f}  {s['widths']}")
    return "\n".join(lines)
