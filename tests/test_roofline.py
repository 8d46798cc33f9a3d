import json
from dataclasses import replace

import pytest

from edgedyn.backends.roofline import (
    SCHEMA,
    RooflineDevice,
    block_breakdown,
    block_bytes,
    block_latency_ms,
    load_device,
    padded_channels,
    predict_keys,
    shipped_devices,
)
from edgedyn.blocks import BlockKey
from edgedyn.errors import ArtifactError, EdgedynError

ORIN = "jetson_agx_orin_64gb"


@pytest.fixture()
def dev():
    return RooflineDevice(
        name="test-gpu", peak_ops_per_s={"fp32": 10e12, "fp16": 40e12, "int8": 80e12},
        memory_bandwidth_bytes_per_s=200e9, layer_overhead_s=10e-6, compute_efficiency=0.6,
        depthwise_efficiency=0.15, memory_efficiency=0.7,
        channel_alignment={"fp32": 1, "fp16": 8, "int8": 32},
        sources=[{"title": "made up for a test", "url": "https://example.invalid/"}])


def conv(c_in, c_out, hw=56, k=3, precision="fp32", **kw):
    return BlockKey("conv", c_in, c_out, hw, hw, k, 1, k // 2, precision=precision, **kw)


def test_monotone_in_channels(dev):
    for p in ("fp32", "fp16", "int8"):
        lat = [block_latency_ms(dev, conv(64, c, precision=p)) for c in range(1, 257)]
        assert all(b >= a for a, b in zip(lat, lat[1:])), p
        lat_in = [block_latency_ms(dev, conv(c, 64, precision=p)) for c in range(1, 257)]
        assert all(b >= a for a, b in zip(lat_in, lat_in[1:])), p
        assert lat[-1] > lat[0]


def test_compute_bound_conv_scales_linearly_with_c_out(dev):
    small, big = conv(256, 256, hw=56), conv(256, 512, hw=56)
    assert block_breakdown(dev, small)["bound"] == "compute"
    assert block_breakdown(dev, big)["bound"] == "compute"
    t_small = block_latency_ms(dev, small) - dev.layer_overhead_s * 1e3
    t_big = block_latency_ms(dev, big) - dev.layer_overhead_s * 1e3
    assert t_big / t_small == pytest.approx(2.0, rel=1e-9)
    # and the compute time is 2*MACs / (peak * efficiency)
    assert block_breakdown(dev, small)["compute_s"] == pytest.approx(2 * small.macs() / (10e12 * 0.6))


def test_misaligned_channels_cost_the_aligned_count_above(dev):
    # fp16 pads to multiples of 8: 57..64 channels all cost what 64 costs; 65 steps up
    t64 = block_latency_ms(dev, conv(64, 64, precision="fp16"))
    for c in (57, 60, 63):
        assert block_latency_ms(dev, conv(64, c, precision="fp16")) == t64
        assert block_latency_ms(dev, conv(c, 64, precision="fp16")) == t64
    assert block_latency_ms(dev, conv(64, 65, precision="fp16")) > t64
    # int8 pads to 32: 40 costs what 64 costs
    assert block_latency_ms(dev, conv(64, 40, precision="int8")) == block_latency_ms(dev, conv(64, 64, precision="int8"))
    # fp32 has no padding: 60 is cheaper than 64
    assert block_latency_ms(dev, conv(64, 60)) < block_latency_ms(dev, conv(64, 64))
    assert padded_channels(dev, "fp16", 60) == 64 and padded_channels(dev, "int8", 33) == 64
    assert padded_channels(dev, "fp16", 3) == 8


@pytest.mark.parametrize("key", [
    BlockKey("gap", 512, 512, 7, 7),
    BlockKey("add", 256, 256, 28, 28, act="relu"),
    BlockKey("maxpool", 64, 64, 112, 112, 3, 2, 1),
])
def test_memory_bound_blocks_follow_bandwidth(dev, key):
    b = block_breakdown(dev, key)
    assert b["bound"] == "memory"
    expected = block_bytes(dev, key) / (dev.memory_bandwidth_bytes_per_s * dev.memory_efficiency)
    assert block_latency_ms(dev, key) == pytest.approx((expected + dev.layer_overhead_s) * 1e3)
    fast = replace(dev, memory_bandwidth_bytes_per_s=2 * dev.memory_bandwidth_bytes_per_s)
    t = block_latency_ms(dev, key) - dev.layer_overhead_s * 1e3
    t_fast = block_latency_ms(fast, key) - dev.layer_overhead_s * 1e3
    assert t_fast == pytest.approx(t / 2)


def test_add_reads_two_inputs_and_fused_residual_costs_a_read(dev):
    add = BlockKey("add", 64, 64, 32, 32)
    assert block_bytes(dev, add) == 3 * 64 * 32 * 32 * 4
    plain, fused = conv(64, 64, hw=32), conv(64, 64, hw=32, residual=True)
    assert block_bytes(dev, fused) - block_bytes(dev, plain) == 64 * 32 * 32 * 4


def test_precision_element_size_and_speed(dev):
    big = conv(256, 256, hw=56)
    assert block_latency_ms(dev, replace_precision(big, "fp16")) < block_latency_ms(dev, big)
    assert block_bytes(dev, replace_precision(big, "fp16")) == block_bytes(dev, big) / 2


def replace_precision(key, p):
    return replace(key, precision=p)


def test_depthwise_uses_its_own_efficiency(dev):
    key = BlockKey("conv", 512, 512, 56, 56, 3, 1, 1, depthwise=True)
    b = block_breakdown(dev, key)
    assert b["compute_s"] == pytest.approx(2 * key.macs() / (10e12 * 0.15))
    dense = block_breakdown(replace(dev, depthwise_efficiency=0.6), key)
    assert dense["compute_s"] == pytest.approx(b["compute_s"] / 4)


def test_predict_keys_dedups_and_prices(dev):
    keys = [conv(16, 16), conv(16, 16), BlockKey("gap", 16, 16, 8, 8)]
    table = predict_keys(dev, keys)
    assert list(table) == [conv(16, 16), BlockKey("gap", 16, 16, 8, 8)]
    assert all(v > dev.layer_overhead_s * 1e3 for v in table.values())


def test_unknown_precision_is_one_line_error(dev):
    with pytest.raises(EdgedynError, match="precision 'bf16'") as err:
        block_latency_ms(dev, conv(8, 8, precision="bf16"))
    assert "\n" not in str(err.value)


def test_json_round_trip(dev, tmp_path):
    path = dev.save(tmp_path / "d.json")
    assert json.loads(path.read_text())["schema"] == SCHEMA
    back = RooflineDevice.load(path)
    assert back == dev
    key = conv(32, 48, precision="fp16")
    assert block_latency_ms(back, key) == block_latency_ms(dev, key)


def _write(tmp_path, obj):
    p = tmp_path / "dev.json"
    p.write_text(json.dumps(obj))
    return p


@pytest.mark.parametrize("mutate, field", [
    (lambda o: o.pop("memory_bandwidth_bytes_per_s"), "memory_bandwidth_bytes_per_s"),
    (lambda o: o["peak_ops_per_s"].pop("int8"), "int8"),
    (lambda o: o.update(layer_overhead_s="15us"), "layer_overhead_s"),
    (lambda o: o.update(compute_efficiency=True), "compute_efficiency"),
    (lambda o: o.update(channel_alignment={"fp32": 1, "fp16": 8.5, "int8": 32}), "fp16"),
    (lambda o: o.update(sources="nvidia.com"), "sources"),
    (lambda o: o.update(sources=[{"title": "x"}]), "url"),
    (lambda o: o.update(schema="edgedyn.latency_table/1"), "schema"),
    (lambda o: o.pop("schema"), "schema"),
    (lambda o: o.update(memory_efficiency=1.5), "memory_efficiency"),
    (lambda o: o["peak_ops_per_s"].update(fp16=0), "fp16"),
])
def test_schema_errors_name_file_and_field(dev, tmp_path, mutate, field):
    obj = dev.to_json()
    mutate(obj)
    path = _write(tmp_path, obj)
    with pytest.raises(ArtifactError) as err:
        RooflineDevice.load(path)
    msg = str(err.value)
    assert str(path) in msg and field in msg
    assert "\n" not in msg


def test_shipped_orin_file_loads_with_cited_figures():
    assert ORIN in shipped_devices()
    orin = load_device(ORIN)
    assert orin.peak_ops_per_s["fp32"] == pytest.approx(2048 * 2 * 1.3e9)
    assert orin.peak_ops_per_s["int8"] == pytest.approx(171e12 / 2)
    assert orin.peak_ops_per_s["fp16"] == pytest.approx(orin.peak_ops_per_s["int8"] / 2)
    assert orin.memory_bandwidth_bytes_per_s == pytest.approx(204.8e9)
    assert 10e-6 <= orin.layer_overhead_s <= 20e-6
    assert orin.channel_alignment["fp16"] == 8 and orin.channel_alignment["int8"] in (16, 32)
    assert len(orin.sources) >= 2 and all(s["url"].startswith("https://") for s in orin.sources)
    for field in ("peak_ops_per_s.fp32", "peak_ops_per_s.fp16", "peak_ops_per_s.int8",
                  "memory_bandwidth_bytes_per_s", "layer_overhead_s", "compute_efficiency", "memory_efficiency"):
        assert field in orin.notes, field
    for assumed in ("layer_overhead_s", "compute_efficiency", "memory_efficiency", "depthwise_efficiency"):
        assert "ASSUMPTION" in orin.notes[assumed]
    # fp16 beats fp32 on a big conv, and the fp16 alignment step shows
    big = conv(256, 256, hw=56)
    assert block_latency_ms(orin, replace_precision(big, "fp16")) < block_latency_ms(orin, big)
    assert block_latency_ms(orin, conv(64, 60, precision="fp16")) == block_latency_ms(orin, conv(64, 64, precision="fp16"))


def test_constructor_rejects_bad_values():
    with pytest.raises(EdgedynError, match="compute_efficiency"):
        RooflineDevice(name="x", peak_ops_per_s={"fp32": 1, "fp16": 1, "int8": 1}, memory_bandwidth_bytes_per_s=1,
                       layer_overhead_s=0, compute_efficiency=0)
    with pytest.raises(EdgedynError, match="int8"):
        RooflineDevice(name="x", peak_ops_per_s={"fp32": 1, "fp16": 1}, memory_bandwidth_bytes_per_s=1,
                       layer_overhead_s=0)
