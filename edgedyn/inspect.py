"""Describe a model's dynamic structure (the data behind ``edgedyn inspect``)."""

from __future__ import annotations

from typing import Any

from .dynamic import DynamicNet, SubnetSpec


def describe(
    model: str,
    *,
    input_size: int | None = None,
    num_classes: int | None = None,
    spec: SubnetSpec | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Coupling groups (layers, channel grid, floor) and the cost of full / smallest / ``spec``."""
    net = DynamicNet.from_name(model, num_classes=num_classes, input_size=input_size, **options)
    specs = {"full": net.full_spec(), "min": net.min_spec()}
    if spec is not None:
        specs["spec"] = net.check_spec(spec)
    return {
        "model": net.name,
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
                "layers": [f"{m.layer}:{m.side}" for m in g.members],
            }
            for g in net.groups
        ],
        "subnets": {k: {"widths": list(s.widths), "macs": net.macs(s), "params": net.params(s)}
                    for k, s in specs.items()},
    }


def format_description(desc: dict[str, Any]) -> str:
    lines = [
        f"model {desc['model']}  input {tuple(desc['input_shape'])}  classes {desc['num_classes']}  "
        f"classifier {desc['classifier']} (never slimmed)",
        f"{len(desc['groups'])} coupling groups:",
        f"{'#':>3} {'name':<28} {'ch':>5} {'step':>5} {'floor':>5}  layers",
    ]
    for g in desc["groups"]:
        step = g["grid"][1] - g["grid"][0] if len(g["grid"]) > 1 else g["grid"][0]
        layers = ", ".join(g["layers"])
        if len(layers) > 90:
            layers = layers[:87] + "..."
        lines.append(f"{g['index']:>3} {g['name']:<28} {g['channels']:>5} {step:>5} {g['floor']:>5}  {layers}")
    lines.append("")
    lines.append(f"{'sub-net':<8} {'GMACs':>9} {'Mparams':>9}  widths")
    for k, s in desc["subnets"].items():
        lines.append(f"{k:<8} {s['macs'] / 1e9:>9.4f} {s['params'] / 1e6:>9.4f}  {s['widths']}")
    return "\n".join(lines)
