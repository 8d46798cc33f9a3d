"""Which torchvision classification models edgedyn makes dynamic: works / frozen layers / refused.

For every model (``torchvision.models.list_models(module=torchvision.models)``, plus the
in-tree CIFAR ResNets) at a small input: build it untrained, settle its BatchNorm
statistics, then for a random and a uniform (0.5) spec check that ``set_subnet``,
``extract`` and the ONNX Runtime export agree (1e-4). Prints a table by family and writes
JSON (one record per model, rewritten after each model so an interrupted run keeps what
it measured).

    nice env OMP_NUM_THREADS=1 .venv/bin/python tools/model_coverage.py --out docs/model_coverage.json
    .venv/bin/python tools/model_coverage.py --table-only --out docs/model_coverage.json   # reprint

ViT, Swin and MaxViT (attention models) are out of scope and listed without running.
Each record also says whether the latency profiler can cut the model into priced blocks
(``profiler``: ``ok`` or the one-line reason); ``--blocks-only`` adds just that to the
records already in ``--out``:

    nice .venv/bin/python tools/model_coverage.py --blocks-only --models resnet18,densenet121
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OUT_OF_SCOPE = re.compile(r"^(vit_|swin_|maxvit_)")
FAMILIES = [  # (family, name pattern), first match wins
    ("CIFAR ResNet (in-tree)", r"^resnet(20|56)$"), ("ResNet", r"^resnet\d+$"), ("Wide ResNet", r"^wide_resnet"),
    ("ResNeXt", r"^resnext"), ("RegNetX", r"^regnet_x"), ("RegNetY", r"^regnet_y"), ("VGG", r"^vgg"),
    ("AlexNet", r"^alexnet"), ("SqueezeNet", r"^squeezenet"), ("DenseNet", r"^densenet"),
    ("GoogLeNet", r"^googlenet"), ("Inception V3", r"^inception"), ("MobileNet V2", r"^mobilenet_v2"),
    ("MobileNet V3", r"^mobilenet_v3"), ("MnasNet", r"^mnasnet"), ("EfficientNet", r"^efficientnet_b"),
    ("EfficientNet V2", r"^efficientnet_v2"), ("ShuffleNet V2", r"^shufflenet"), ("ConvNeXt", r"^convnext"),
    ("ViT", r"^vit_"), ("Swin", r"^swin"), ("MaxViT", r"^maxvit"),
]
TOL = 1e-4


def family(name: str) -> str:
    return next((f for f, pat in FAMILIES if re.search(pat, name)), name)


def check_model(name: str, size: int = 64, num_classes: int = 10) -> dict:
    """Build ``name``, check set_subnet == extract == ONNX Runtime on a random and a uniform spec."""
    import torch

    from edgedyn.dynamic import DynamicNet
    from edgedyn.errors import EdgedynError
    from edgedyn.export import run_onnxruntime
    from edgedyn.models import resolve_model

    start = time.perf_counter()
    record: dict = {"model": name, "family": family(name)}
    size = max(size, resolve_model(name).min_input_size)
    record["input_size"] = size
    try:
        net = DynamicNet.from_name(name, num_classes=num_classes, input_size=size)
    except EdgedynError as err:
        return {**record, "status": "refused", "why": str(err), "seconds": round(time.perf_counter() - start, 1)}
    _settle(net, size)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, size, size, generator=gen)
    worst = {"extract": 0.0, "onnx": 0.0}
    with tempfile.TemporaryDirectory() as tmp:
        for i, spec in enumerate((net.random_spec(0), net.uniform_spec(0.5))):
            net.set_subnet(spec)
            with torch.no_grad():
                a = net(x)
                b = net.extract(spec)(x)
            scale = max(1.0, float(a.abs().max()))
            worst["extract"] = max(worst["extract"], float((a - b).abs().max()) / scale)
            path = net.export_onnx(spec, Path(tmp) / f"{i}.onnx")
            worst["onnx"] = max(worst["onnx"], float(abs(run_onnxruntime(path, x.numpy()) - a.numpy()).max()) / scale)
    record["profiler"] = profiler_blocks(net)
    frozen = net.frozen_groups()
    ok = max(worst.values()) <= TOL
    status = "mismatch" if not ok else ("frozen layers" if frozen else "works")
    reasons = sorted({_short(g.frozen or "") for g in frozen})
    return {**record, "status": status, "why": "; ".join(reasons[:3]), "groups": len(net.groups),
            "frozen_groups": len(frozen), "frozen_layers": len(net.frozen_layers()),
            "min_macs_ratio": round(net.macs(net.min_spec()) / net.macs(net.full_spec()), 4),
            "max_rel_diff": {k: float(f"{v:.2e}") for k, v in worst.items()},
            "seconds": round(time.perf_counter() - start, 1)}


def profiler_blocks(net) -> str:
    """``ok (N blocks, K keys)`` when the latency profiler can price every block of ``net``, else why not."""
    from edgedyn.blocks import all_keys, model_blocks
    from edgedyn.errors import EdgedynError

    try:
        return f"ok ({len(model_blocks(net))} blocks, {len(all_keys(net))} keys)"
    except EdgedynError as err:
        return f"no: {err}"[:200]


def _blocks_only(names: list[str], done: dict[str, dict], size: int, out: Path) -> None:
    from edgedyn.dynamic import DynamicNet
    from edgedyn.errors import EdgedynError

    for name in names:
        rec = done.get(name)
        if rec is None or rec.get("status") in ("refused", "out of scope"):
            continue
        try:
            net = DynamicNet.from_name(name, num_classes=10, input_size=rec.get("input_size", size))
        except EdgedynError as err:
            rec["profiler"] = f"no: {err}"[:200]
        else:
            rec["profiler"] = profiler_blocks(net)
        print(f"{name}: profiler {rec['profiler']}", flush=True)
        out.write_text(json.dumps({"size": size, "tolerance": TOL, "models": list(done.values())}, indent=1) + "\n")


def _short(reason: str) -> str:
    """A frozen reason without its layer name (one line per kind of cause)."""
    return re.sub(r"^layer '[^']*'(?: \([^)]*\))?:? ?", "", reason.split("; ")[0])[:120]


def _settle(net, size: int) -> None:
    import torch

    for _, m in net.bn_layers():
        m.reset_running_stats()
        m.momentum = None
    net.train()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _ in range(2):
            net(torch.randn(4, 3, size, size, generator=gen))
    net.eval()


def table(records: list[dict]) -> str:
    """A markdown table by family: the status of each model and why."""
    by_family: dict[str, list[dict]] = {}
    for r in records:
        by_family.setdefault(r["family"], []).append(r)
    lines = ["| family | models | status | why | latency profiler |", "|---|---|---|---|---|"]
    for fam, _ in FAMILIES:
        rs = by_family.get(fam)
        if not rs:
            continue
        statuses = sorted({r["status"] for r in rs})
        whys = sorted({r["why"] for r in rs if r.get("why")})
        models = ", ".join(f"`{r['model']}`" for r in rs)
        prof = sorted({_profiler_short(r["profiler"]) for r in rs if r.get("profiler")})
        lines.append(f"| {fam} | {models} | {' / '.join(statuses)} | {'; '.join(whys)[:300]} | "
                     f"{'; '.join(prof) or ('n/a' if rs[0]['status'] in ('refused', 'out of scope') else 'not run')} |")
    return "\n".join(lines)


def _profiler_short(text: str) -> str:
    return "prices every block" if text.startswith("ok") else text.removeprefix("no: ").split(" has no latency")[0][:100]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "model_coverage.json")
    parser.add_argument("--size", type=int, default=64, help="input height = width (raised to a model's minimum)")
    parser.add_argument("--models", default=None, help="comma-separated names (default: all)")
    parser.add_argument("--table-only", action="store_true", help="reprint the table of --out, measure nothing")
    parser.add_argument("--blocks-only", action="store_true",
                        help="only add the profiler's block check to the records in --out (of --models)")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    done: dict[str, dict] = {}
    if args.out.is_file():
        done = {r["model"]: r for r in json.loads(args.out.read_text())["models"]}
    if args.blocks_only:
        _blocks_only(args.models.split(",") if args.models else list(done), done, args.size, args.out)
    elif not args.table_only:
        from edgedyn.models import builtin_names

        names = args.models.split(",") if args.models else _cheap_first(builtin_names())
        for name in names:
            if name in done:
                continue
            if OUT_OF_SCOPE.match(name):
                done[name] = {"model": name, "family": family(name), "status": "out of scope",
                              "why": "attention model, not a CNN"}
            else:
                done[name] = check_model(name, args.size)
            print(f"{name}: {done[name]['status']} {done[name].get('why', '')[:160]} "
                  f"({done[name].get('seconds', 0)} s)", flush=True)
            args.out.write_text(json.dumps({"size": args.size, "tolerance": TOL, "models": list(done.values())},
                                           indent=1) + "\n")
    print(table(list(done.values())))


#: The smallest member of each family, run first so that an interrupted run covers every family.
FIRST = ("resnet20", "resnet18", "wide_resnet50_2", "resnext50_32x4d", "regnet_x_400mf", "regnet_y_400mf", "vgg11_bn",
         "alexnet", "squeezenet1_1", "densenet121", "googlenet", "inception_v3", "mobilenet_v2", "mobilenet_v3_small",
         "mnasnet0_5", "efficientnet_b0", "efficientnet_v2_s", "shufflenet_v2_x0_5", "convnext_tiny")
#: The largest models (hundreds of millions of parameters at 224): last.
LAST = ("convnext_large", "regnet_x_32gf", "regnet_y_32gf", "regnet_y_128gf", "wide_resnet101_2", "efficientnet_b7",
        "efficientnet_v2_l", "vgg19", "vgg19_bn")


def _cheap_first(names: tuple[str, ...]) -> list[str]:
    scope = [n for n in names if OUT_OF_SCOPE.match(n)]
    rest = [n for n in names if n not in FIRST and n not in LAST and n not in scope]
    return [n for n in FIRST if n in names] + scope + rest + [n for n in LAST if n in names]


if __name__ == "__main__":
    main()
