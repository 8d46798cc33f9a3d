import json
import socket

import pytest
import torch

from edgedyn import device as dv
from edgedyn.device import CLOCKS_WARNING, device_fingerprint, device_info, jetson_warnings
from edgedyn.errors import BackendUnavailable, EdgedynError

HAS_CUDA = torch.cuda.is_available()


def test_cpu_info_has_name_cores_threads():
    info = device_info("cpu")
    assert info["kind"] == "cpu"
    assert isinstance(info["name"], str) and info["name"]
    assert info["logical_threads"] == __import__("os").cpu_count()
    assert info["physical_cores"] is None or 1 <= info["physical_cores"] <= info["logical_threads"]
    assert info["torch_intra_op_threads"] == torch.get_num_threads()
    for k in ("machine", "os", "python", "torch"):
        assert info[k]
    json.dumps(info)  # JSON-able as recorded in tables
    host = socket.gethostname()
    if len(host) >= 6:  # a short name could match any text by chance
        assert host not in json.dumps(info)
    assert "hostname" not in info and "serial" not in json.dumps(info).lower()
    assert device_fingerprint(info) == f"cpu:{' '.join(info['name'].split())}"


def test_cpu_info_survives_missing_files_and_commands(monkeypatch):
    monkeypatch.setattr(dv, "_read_text", lambda path: None)
    monkeypatch.setattr(dv, "_run", lambda cmd, timeout=dv.CMD_TIMEOUT_S: None)
    info = device_info("cpu")
    assert info["name"]  # platform.processor() or "unknown", never a crash
    assert info["logical_threads"] >= 1
    assert info["governor"] == "unknown"


def test_parse_cpuinfo_counts_physical_cores():
    text = "\n".join(
        f"processor\t: {i}\nmodel name\t: Intel(R) Xeon(R) Test CPU\nphysical id\t: {i // 4}\ncore id\t: {(i // 2) % 2}\n"
        for i in range(8))
    parsed = dv._parse_cpuinfo(text)
    assert parsed == {"model": "Intel(R) Xeon(R) Test CPU", "physical_cores": 4, "processors": 8, "isa": None,
                      "int8_saturates": None}
    assert dv._isa({"fpu", "avx", "avx2", "avx512f"}) == "avx512" and dv._isa({"asimd"}) == "neon"
    assert dv._isa({"avx", "avx2"}) == "avx2" and dv._isa(set()) is None
    arm = dv._parse_cpuinfo("processor\t: 0\nCPU implementer\t: 0x41\nCPU part\t: 0xd42\n\n")
    assert "0xd42" in arm["model"] and arm["physical_cores"] is None


def test_run_returns_none_for_missing_command():
    assert dv._run(["edgedyn-no-such-command-xyz"]) is None


@pytest.mark.skipif(HAS_CUDA, reason="checks the no-CUDA path")
@pytest.mark.parametrize("kind", ["cuda", "jetson"])
def test_cuda_and_jetson_unavailable_here(kind):
    with pytest.raises(BackendUnavailable) as err:
        device_info(kind)
    assert "CUDA is not available" in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_kind_is_one_line_error():
    with pytest.raises(EdgedynError, match="unknown device 'tpu'"):
        device_info("tpu")


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_cuda_info_on_a_gpu():
    info = device_info("cuda")
    assert info["name"] == torch.cuda.get_device_name()
    assert info["compute_capability"].count(".") == 1
    assert info["total_memory_bytes"] > 0
    assert device_fingerprint(info) == f"cuda:{info['name']}"


def test_parsers_for_jetson_files():
    assert dv._parse_tegra_release("# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic") == "36.4.3"
    assert dv._parse_tegra_release("garbage") is None
    assert dv._parse_nvpmodel_q("NV Power Mode: MODE_30W\n2\n") == {"name": "MODE_30W", "id": 2}
    assert dv._parse_nvpmodel_q("NVPM WARN: something\nNV Power Mode: MAXN\n0") == {"name": "MAXN", "id": 0}
    assert dv._parse_nvpmodel_q(None) is None


def test_jetson_warnings_logic():
    assert jetson_warnings({"name": "MAXN", "id": 0}, True) == []
    assert jetson_warnings({"name": "MAXN", "id": 0}, False) == [CLOCKS_WARNING]
    w = jetson_warnings({"name": "MODE_30W", "id": 2}, True)
    assert w == ["power mode MODE_30W is not the maximum (sudo nvpmodel -m 0)"]
    # the maximum is the MAXN mode when the list of modes is known
    w = jetson_warnings({"name": "25W", "id": 1, "models": ["15W", "25W", "MAXN_SUPER"]}, True)
    assert w == ["power mode 25W is not the maximum (sudo nvpmodel -m 2)"]
    assert jetson_warnings({"name": "MAXN_SUPER", "id": 2, "models": ["15W", "25W", "MAXN_SUPER"]}, True) == []
    unknown = jetson_warnings(None, None)
    assert len(unknown) == 2 and all("unknown" in u for u in unknown)


@pytest.fixture()
def fake_jetson(monkeypatch):
    """A Jetson AGX Orin as the probes would see it, without jetson-stats."""
    cuda = {"name": "Orin", "gpu_name": "Orin", "compute_capability": "8.7", "total_memory_bytes": 64 << 30,
            "sm_count": 16, "driver_version": "unknown", "cuda_runtime": "12.6", "cudnn": "90300",
            "device_index": 0, "unknown": ["driver_version"]}
    monkeypatch.setattr(dv, "_probe_cuda", lambda: dict(cuda))
    monkeypatch.setattr(dv, "_probe_board_files", lambda: {
        "model": "NVIDIA Jetson AGX Orin Developer Kit", "soc": "tegra234", "l4t": "36.4.3"})
    monkeypatch.setattr(dv, "_probe_jtop", lambda: None)
    state = {"power": {"name": "MAXN", "id": 0}, "clocks": {"source": "devfreq:17000000.gpu", "gpu_cur_hz": 1300500000,
                                                           "gpu_min_hz": 1300500000, "gpu_max_hz": 1300500000,
                                                           "locked": True}}
    monkeypatch.setattr(dv, "_probe_nvpmodel", lambda: state["power"])
    monkeypatch.setattr(dv, "_probe_clocks", lambda: state["clocks"])
    return state


def test_jetson_info_locked_maxn_has_no_warnings(fake_jetson):
    info = device_info("jetson")
    assert info["kind"] == "jetson" and info["warnings"] == []
    assert info["l4t"] == "36.4.3" and info["board"] == "NVIDIA Jetson AGX Orin Developer Kit"
    assert info["driver_version"] == "L4T 36.4.3"
    assert "jetpack" in info["unknown"] and "module" in info["unknown"]  # says what it could not read
    assert device_fingerprint(info) == "jetson:NVIDIA Jetson AGX Orin Developer Kit"
    json.dumps(info)


def test_jetson_unlocked_clocks_warn(fake_jetson):
    fake_jetson["clocks"] = dict(fake_jetson["clocks"], gpu_min_hz=306000000, locked=False)
    info = device_info("jetson")
    assert info["warnings"] == [CLOCKS_WARNING]
    assert info["clocks_locked"] is False


def test_jetson_non_max_power_mode_warns(fake_jetson):
    fake_jetson["power"] = {"name": "MODE_30W", "id": 2}
    info = device_info("jetson")
    assert info["warnings"] == ["power mode MODE_30W is not the maximum (sudo nvpmodel -m 0)"]


def test_jetson_without_probes_says_unknown(fake_jetson):
    fake_jetson["power"] = None
    fake_jetson["clocks"] = None
    info = device_info("jetson")
    assert info["power_mode"] == "unknown" and info["clocks_locked"] == "unknown"
    assert {"power_mode", "clocks_locked"} <= set(info["unknown"])
    assert len(info["warnings"]) == 2


def test_jetson_prefers_jtop(fake_jetson, monkeypatch):
    monkeypatch.setattr(dv, "_probe_jtop", lambda: {
        "hardware": {"Model": "NVIDIA Jetson AGX Orin Developer Kit", "Module": "NVIDIA Jetson AGX Orin (64GB ram)",
                     "L4T": "36.4.3", "Jetpack": "6.2", "SoC": "tegra234"},
        "power_mode": {"name": "MODE_50W", "id": 3, "models": ["MAXN", "MODE_15W", "MODE_30W", "MODE_50W"]},
        "jetson_clocks": {"running": False, "status": "inactive"}})
    info = device_info("jetson")
    assert info["jetson_stats"] is True and info["jetpack"] == "6.2"
    assert info["warnings"] == [CLOCKS_WARNING, "power mode MODE_50W is not the maximum (sudo nvpmodel -m 0)"]
    assert device_fingerprint(info) == "jetson:NVIDIA Jetson AGX Orin (64GB ram)"


def test_cuda_machine_that_is_not_a_jetson(fake_jetson, monkeypatch):
    monkeypatch.setattr(dv, "_probe_board_files", lambda: {})
    with pytest.raises(BackendUnavailable, match="not an NVIDIA Jetson") as err:
        device_info("jetson")
    assert "\n" not in str(err.value)


def test_jtop_probe_is_none_without_jetson_stats():
    try:
        import jtop  # noqa: F401
    except ImportError:
        assert dv._probe_jtop() is None
    else:  # pragma: no cover - only on a machine with jetson-stats
        pytest.skip("jetson-stats installed")


def test_busy_fraction_is_a_share_of_cpu_time():
    from edgedyn.device import busy_fraction

    busy = busy_fraction(0.05)
    assert busy is None or 0.0 <= busy <= 1.0


def test_int8_saturation_follows_the_cpu_flags():
    """8-bit x86 kernels without VNNI sum u8 x s8 pairs in 16 bits and can saturate: weights are
    then quantized to 7 bits; VNNI CPUs and non-x86 CPUs keep 8."""
    from edgedyn.cpu_flags import int8_saturates as _int8_saturates

    assert _int8_saturates({"sse4_1", "avx", "avx2", "fma"}) is True  # this project's AVX2 EPYC VM
    assert _int8_saturates({"avx2", "avx512f", "avx512bw"}) is True
    assert _int8_saturates({"avx2", "avx512f", "avx512_vnni"}) is False
    assert _int8_saturates({"avx2", "avx_vnni"}) is False
    assert _int8_saturates({"fp", "asimd", "asimddp"}) is None  # Arm: ONNX Runtime's own kernels
