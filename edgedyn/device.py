"""Device metadata: what every latency table and bundle manifest records about its device.

:func:`device_info` returns a JSON-able dict of facts that change a measured latency
(and no host name, serial number or user name):

- always: ``kind`` (cpu | cuda | jetson), ``machine``, ``os``, ``python``, ``torch``;
- ``cpu``: CPU model (``name``), physical cores, logical threads, the threads this process
  may use, torch's intra-op thread count, the frequency governor where readable;
- ``cuda``: GPU name, compute capability, memory, SM count, driver (``nvidia-smi``),
  CUDA runtime and cuDNN versions; raises :class:`BackendUnavailable` without CUDA;
- ``jetson``: everything of ``cuda`` plus the board and module, L4T and JetPack releases,
  power mode (``nvpmodel -q``) and clock state (``jetson_clocks``). jetson-stats
  (``from jtop import jtop``) is used when installed; otherwise files and commands
  (``/etc/nv_tegra_release``, ``/proc/device-tree/model``, ``nvpmodel -q``, devfreq
  sysfs); whatever cannot be read is named in ``unknown``. ``warnings`` lists the
  settings that make measurements slower than the board can run (clocks not locked,
  power mode not the maximum).

:func:`device_fingerprint` is the identity a latency table is tied to (``kind:name``).

Nothing here crashes when a file or command is missing: every probe catches its own
failure, and subprocesses run with a short timeout.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .cpu_flags import int8_saturates as _int8_saturates
from .cpu_flags import isa as _isa
from .errors import BackendUnavailable, EdgedynError

KINDS = ("cpu", "cuda", "jetson")
CMD_TIMEOUT_S = 3.0
UNKNOWN = "unknown"

CLOCKS_WARNING = "clocks are not locked (run sudo jetson_clocks)"


# -- small safe helpers ---------------------------------------------------------------
def _read_text(path: str | os.PathLike) -> str | None:
    """File contents (NUL bytes stripped), or None when unreadable."""
    try:
        return Path(path).read_bytes().replace(b"\x00", b"").decode(errors="replace").strip()
    except OSError:
        return None


def _run(cmd: list[str], timeout: float = CMD_TIMEOUT_S) -> str | None:
    """stdout of ``cmd`` when it exists and exits 0 within ``timeout``; otherwise None."""
    if shutil.which(cmd[0]) is None:
        return None
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def _int_or_none(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


# -- common -----------------------------------------------------------------------------
def _common(kind: str) -> dict[str, Any]:
    try:
        import torch

        torch_version = str(torch.__version__)
    except ImportError:  # pragma: no cover - torch is a hard dependency
        torch_version = UNKNOWN
    return {
        "kind": kind,
        "machine": platform.machine() or UNKNOWN,
        "os": f"{platform.system()} {platform.release()}".strip() or UNKNOWN,
        "python": platform.python_version(),
        "torch": torch_version,
    }


# -- CPU ------------------------------------------------------------------------------
def _parse_cpuinfo(text: str) -> dict[str, Any]:
    """Model name and core counts from /proc/cpuinfo text (x86 and Arm layouts)."""
    model = None
    cores: set[tuple[str, str]] = set()
    phys, core = "0", None
    arm_part = arm_impl = None
    flags: set[str] = set()
    n_proc = 0
    for line in text.splitlines() + [""]:
        if not line.strip():  # end of one processor block
            if core is not None:
                cores.add((phys, core))
            phys, core = "0", None
            continue
        key, _, value = (s.strip() for s in line.partition(":"))
        if key == "processor":
            n_proc += 1
        elif key == "model name" and model is None:
            model = value
        elif key == "physical id":
            phys = value
        elif key == "core id":
            core = value
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
        elif key == "CPU part" and arm_part is None:
            arm_part = value
        elif key == "CPU implementer" and arm_impl is None:
            arm_impl = value
    if model is None and arm_part is not None:
        model = f"Arm CPU (implementer {arm_impl or '?'}, part {arm_part})"
    return {"model": model, "physical_cores": len(cores) or None, "processors": n_proc or None, "isa": _isa(flags),
            "int8_saturates": _int8_saturates(flags)}


def int8_saturates() -> bool:
    """:func:`_int8_saturates` of this machine (False where unknown): int8 weights are then
    quantized to 7 bits (ONNX Runtime's ``reduce_range``)."""
    return bool(_parse_cpuinfo(_read_text("/proc/cpuinfo") or "")["int8_saturates"])


def _sysfs_physical_cores() -> int | None:
    """Distinct (package, core) pairs under /sys/devices/system/cpu (Arm has no core ids in cpuinfo)."""
    pairs = set()
    for topo in Path("/sys/devices/system/cpu").glob("cpu[0-9]*/topology"):
        core = _read_text(topo / "core_id")
        if core is None:
            continue
        pairs.add((_read_text(topo / "physical_package_id") or "0", _read_text(topo / "cluster_id") or "", core))
    return len(pairs) or None


def _cpu_info() -> dict[str, Any]:
    parsed = _parse_cpuinfo(_read_text("/proc/cpuinfo") or "")
    name = parsed["model"] or platform.processor() or UNKNOWN
    threads = os.cpu_count()
    physical = parsed["physical_cores"] or _sysfs_physical_cores()
    available: int | None
    try:
        available = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        available = threads
    try:
        import torch

        torch_threads = torch.get_num_threads()
    except ImportError:  # pragma: no cover
        torch_threads = None
    info: dict[str, Any] = {
        "name": name,
        "cpu_model": name,
        "physical_cores": physical,
        "logical_threads": threads,
        "threads_available": available,
        "torch_intra_op_threads": torch_threads,
        "isa": parsed["isa"],
        "governor": _read_text("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor") or UNKNOWN,
    }
    unknown = [k for k in ("physical_cores", "logical_threads") if info[k] is None]
    if name == UNKNOWN:
        unknown.append("name")
    info["unknown"] = unknown
    return info


# -- CUDA -----------------------------------------------------------------------------
def _nvidia_smi_driver() -> str | None:
    out = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
    return out.splitlines()[0].strip() if out else None


def _nvidia_smi_clock_state() -> dict[str, Any]:
    """The GPU's application clocks (MHz) and power limit (W), where ``nvidia-smi`` reads them:
    the settings that move a GPU's latency (a machine-state key records them; empty when unreadable)."""
    out = _run(["nvidia-smi", "--query-gpu=clocks.applications.graphics,clocks.applications.memory,power.limit",
                "--format=csv,noheader,nounits"])
    if not out:
        return {}
    parts = [p.strip() for p in out.splitlines()[0].split(",")]
    if len(parts) != 3:
        return {}
    state: dict[str, Any] = {}
    if parts[0].isdigit() and parts[1].isdigit():
        state["gpu_clocks"] = f"{parts[0]}/{parts[1]} MHz"
    try:
        state["power_limit_w"] = round(float(parts[2]), 1)
    except ValueError:
        pass
    return state


def _probe_cuda() -> dict[str, Any]:
    """GPU facts through torch; raises BackendUnavailable (one line) when CUDA is absent."""
    try:
        import torch
    except ImportError:  # pragma: no cover
        raise BackendUnavailable("CUDA is not available: torch is not installed") from None
    try:
        available = torch.cuda.is_available()
    except Exception:
        available = False
    if not available:
        built = torch.version.cuda or "none"
        raise BackendUnavailable(
            f"CUDA is not available on this machine (torch {torch.__version__}, built for CUDA {built}, "
            "sees no GPU)")
    idx = torch.cuda.current_device()
    props = torch.cuda.get_device_properties(idx)
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    driver = _nvidia_smi_driver()
    info: dict[str, Any] = {
        "name": props.name,
        "gpu_name": props.name,
        "compute_capability": f"{props.major}.{props.minor}",
        "total_memory_bytes": int(props.total_memory),
        "sm_count": int(props.multi_processor_count),
        "driver_version": driver or UNKNOWN,
        "cuda_runtime": torch.version.cuda or UNKNOWN,
        "cudnn": str(cudnn) if cudnn else UNKNOWN,
        "device_index": idx,
        "unknown": [] if driver else ["driver_version"],
    }
    info.update(_nvidia_smi_clock_state())
    return info


# -- Jetson ---------------------------------------------------------------------------
def _parse_tegra_release(text: str | None) -> str | None:
    """'# R36 (release), REVISION: 4.3, ...' -> '36.4.3'."""
    if not text:
        return None
    m = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text)
    return f"{m.group(1)}.{m.group(2)}" if m else None


def _parse_nvpmodel_q(text: str | None) -> dict[str, Any] | None:
    """``nvpmodel -q`` prints 'NV Power Mode: MAXN' and the mode id on the next line."""
    if not text:
        return None
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for i, line in enumerate(lines):
        m = re.search(r"NV Power Mode:\s*(.+)", line)
        if m:
            mode_id = _int_or_none(lines[i + 1]) if i + 1 < len(lines) else None
            return {"name": m.group(1).strip(), "id": mode_id}
    return None


def _probe_board_files() -> dict[str, Any]:
    """Board facts from files and commands (no jetson-stats)."""
    board: dict[str, Any] = {}
    model = _read_text("/proc/device-tree/model") or _read_text("/sys/firmware/devicetree/base/model")
    if model:
        board["model"] = model
    compatible = _read_text("/proc/device-tree/compatible")
    if compatible:
        board["soc"] = compatible.split(",")[-1]
    l4t = _parse_tegra_release(_read_text("/etc/nv_tegra_release"))
    if l4t:
        board["l4t"] = l4t
    jetpack = _run(["dpkg-query", "-W", "-f=${Version}", "nvidia-jetpack"])
    if jetpack:
        board["jetpack"] = jetpack
    return board


def _is_jetson(board: dict[str, Any]) -> bool:
    return "l4t" in board or "jetson" in str(board.get("model", "")).lower() or \
        "tegra" in str(board.get("soc", "")).lower()


def _probe_nvpmodel() -> dict[str, Any] | None:
    return _parse_nvpmodel_q(_run(["nvpmodel", "-q"]))


def _devfreq_gpu_dirs() -> list[Path]:
    root = Path("/sys/class/devfreq")
    try:
        entries = sorted(root.iterdir())
    except OSError:
        return []
    return [p for p in entries if re.search(r"gpu|ga10b|gv11b|gp10b|gb10b", p.name)]


def _probe_clocks() -> dict[str, Any] | None:
    """GPU clock state from devfreq: jetson_clocks pins min_freq to max_freq.

    Returns None when no GPU devfreq node is readable.
    """
    for d in _devfreq_gpu_dirs():
        cur, lo, hi = (_int_or_none(_read_text(d / f)) for f in ("cur_freq", "min_freq", "max_freq"))
        if lo is None or hi is None:
            continue
        return {"source": f"devfreq:{d.name}", "gpu_cur_hz": cur, "gpu_min_hz": lo, "gpu_max_hz": hi,
                "locked": lo == hi}
    return None


def _probe_jtop(timeout_s: float = 5.0) -> dict[str, Any] | None:
    """Board, power mode and jetson_clocks state through jetson-stats; None when unusable.

    Uses only the documented jtop client API (jetson-stats 4.x): ``jtop().board["hardware"]``,
    ``.nvpmodel`` (``.name``, ``.id``, ``.models``) and ``.jetson_clocks`` (truthy when
    running, ``.status``).
    """
    try:
        from jtop import jtop  # lazy: optional dependency (pip install edgedyn[jetson])
    except Exception:
        return None
    out: dict[str, Any] = {}
    try:
        with jtop(interval=min(1.0, timeout_s / 3)) as jetson:
            if not jetson.ok():
                return None
            hw = dict(jetson.board.get("hardware", {}))
            hw.pop("Serial Number", None)  # an identity, not a performance fact
            out["hardware"] = {str(k): str(v) for k, v in hw.items()}
            nvp = jetson.nvpmodel
            if nvp is not None:
                out["power_mode"] = {"name": str(nvp.name), "id": int(nvp.id), "models": [str(m) for m in nvp.models]}
            jc = jetson.jetson_clocks
            if jc is not None:
                out["jetson_clocks"] = {"running": bool(jc), "status": str(jc.status)}
    except Exception:
        return None
    return out


def _max_power_mode(power_mode: dict[str, Any]) -> tuple[bool, int]:
    """(is the current mode the maximum, id of the maximum mode).

    The maximum is the mode named MAXN* when the list of modes is known (its index), else
    mode 0, which is MAXN on Jetson AGX Orin and Xavier.
    """
    models = power_mode.get("models") or []
    max_id = next((i for i, m in enumerate(models) if "MAXN" in str(m).upper()), 0)
    if "MAXN" in str(power_mode.get("name", "")).upper():
        return True, max_id
    return power_mode.get("id") == max_id, max_id


def jetson_warnings(power_mode: dict[str, Any] | None, clocks_locked: bool | None) -> list[str]:
    """Warnings for settings that make Jetson measurements slower or noisier than they should be."""
    warnings = []
    if clocks_locked is False:
        warnings.append(CLOCKS_WARNING)
    elif clocks_locked is None:
        warnings.append("clock state is unknown (jetson_clocks status unreadable); lock clocks with sudo jetson_clocks")
    if power_mode is None:
        warnings.append("power mode is unknown (nvpmodel -q unavailable); set the maximum with sudo nvpmodel -m 0")
    else:
        is_max, max_id = _max_power_mode(power_mode)
        if not is_max:
            warnings.append(f"power mode {power_mode.get('name', '?')} is not the maximum (sudo nvpmodel -m {max_id})")
    return warnings


def _jetson_info() -> dict[str, Any]:
    board = _probe_board_files()
    jt = _probe_jtop()
    unknown: list[str] = []
    hw = (jt or {}).get("hardware", {})
    if not _is_jetson(board) and not hw:
        raise BackendUnavailable("this machine is not an NVIDIA Jetson (no /etc/nv_tegra_release, no Jetson "
                                 "device-tree model)")
    info: dict[str, Any] = {"jetson_stats": jt is not None}
    info["board"] = hw.get("Model") or board.get("model") or UNKNOWN
    info["module"] = hw.get("Module") or UNKNOWN
    info["soc"] = hw.get("SoC") or board.get("soc") or UNKNOWN
    info["l4t"] = hw.get("L4T") or board.get("l4t") or UNKNOWN
    info["jetpack"] = hw.get("Jetpack") or board.get("jetpack") or UNKNOWN
    if hw:
        info["hardware"] = hw
    for k in ("board", "module", "soc", "l4t", "jetpack"):
        if info[k] == UNKNOWN:
            unknown.append(k)

    power_mode = (jt or {}).get("power_mode") or _probe_nvpmodel()
    info["power_mode"] = power_mode if power_mode is not None else UNKNOWN
    clocks = _probe_clocks()
    locked: bool | None = None
    if jt is not None and "jetson_clocks" in jt:
        locked = jt["jetson_clocks"]["running"]
        info["jetson_clocks"] = jt["jetson_clocks"]
    elif clocks is not None:
        locked = clocks["locked"]
    info["clocks"] = clocks if clocks is not None else UNKNOWN
    info["clocks_locked"] = locked if locked is not None else UNKNOWN
    if power_mode is None:
        unknown.append("power_mode")
    if locked is None:
        unknown.append("clocks_locked")
    info["warnings"] = jetson_warnings(power_mode, locked)
    info["unknown"] = unknown
    return info


# -- public API -----------------------------------------------------------------------
def device_info(device: str) -> dict[str, Any]:
    """Facts about ``device`` (cpu | cuda | jetson) for tables and manifests.

    Raises :class:`BackendUnavailable` (one line) for cuda/jetson on a machine without
    CUDA, or for jetson on a machine that is not a Jetson.
    """
    if device not in KINDS:
        raise EdgedynError(f"unknown device {device!r}; expected one of {', '.join(KINDS)}")
    info = _common(device)
    if device == "cpu":
        info.update(_cpu_info())
        return info
    cuda = _probe_cuda()
    if device == "cuda":
        info.update(cuda)
        info.setdefault("warnings", [])
        return info
    jet = _jetson_info()
    if cuda["driver_version"] == UNKNOWN and jet["l4t"] != UNKNOWN:  # no nvidia-smi on Jetson
        cuda["driver_version"] = f"L4T {jet['l4t']}"
        cuda["unknown"] = [k for k in cuda["unknown"] if k != "driver_version"]
    unknown = cuda.pop("unknown", []) + jet.pop("unknown", [])
    info.update(cuda)
    info.update(jet)
    name = jet["module"] if jet["module"] != UNKNOWN else jet["board"]
    info["name"] = name if name != UNKNOWN else cuda["gpu_name"]
    info["unknown"] = unknown
    return info


def device_fingerprint(info: dict[str, Any]) -> str:
    """The identity a latency table is tied to: ``"<kind>:<name>"``.

    e.g. ``"cpu:Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz"`` or ``"cuda:NVIDIA H100 80GB HBM3"``.
    """
    kind = str(info.get("kind", UNKNOWN))
    name = " ".join(str(info.get("name", UNKNOWN)).split())
    return f"{kind}:{name}"


def busy_fraction(seconds: float = 1.0) -> float | None:
    """Share of all CPU time spent busy over the next ``seconds`` while this process sleeps:
    how loaded the machine is by *others* right before a timing run (Linux; None elsewhere).

    The load average lags by about a minute, so it still shows a training phase that just
    ended; this looks at the machine now.
    """
    import time

    def snapshot() -> tuple[int, int] | None:
        text = _read_text("/proc/stat")
        if not text or not text.startswith("cpu "):
            return None
        vals = [int(v) for v in text.splitlines()[0].split()[1:]]
        idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
        return sum(vals[:8]) - idle, sum(vals[:8])

    a = snapshot()
    time.sleep(seconds)
    b = snapshot()
    if a is None or b is None or b[1] <= a[1]:
        return None
    return round((b[0] - a[0]) / (b[1] - a[1]), 3)


#: other work keeping more than this share of the CPUs busy before a timing gets a warning
BUSY_WARN = 0.1


def busy_before_timing(warn: Callable[[str], None], seconds: float = 0.5) -> float | None:
    """:func:`busy_fraction` right before a timing run, with a warning through ``warn``
    when other work keeps more than :data:`BUSY_WARN` of the CPUs busy."""
    busy = busy_fraction(seconds)
    if busy is not None and busy > BUSY_WARN:
        warn(f"warning: the CPUs are {100 * busy:.0f}% busy with other work; the latencies timed now "
             "will be disturbed")
    return busy

def main() -> None:  # pragma: no cover - manual inspection helper
    import json

    for kind in sys.argv[1:] or ["cpu"]:
        try:
            print(json.dumps(device_info(kind), indent=1))
        except EdgedynError as err:
            print(f"{kind}: {err}")


if __name__ == "__main__":  # pragma: no cover
    main()
