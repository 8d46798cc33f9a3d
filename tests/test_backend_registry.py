"""The backend registry: names -> lazily imported classes; register_backend adds one."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edgedyn.backends import (
    BACKENDS,
    Backend,
    BackendOptions,
    backend_class,
    backend_names,
    get_backend,
    register_backend,
    registry,
)
from edgedyn.errors import EdgedynError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def restore_registry(monkeypatch):
    monkeypatch.setattr(registry, "_TARGETS", dict(registry._TARGETS))


class ToyBackend(Backend):
    name = "toy"
    artifact_suffix = ".toy"

    @classmethod
    def available(cls):
        return True

    def version(self):
        return "toy-1"

    def prepare(self, module, example, workdir):
        raise NotImplementedError

    def build(self, onnx_path, out_path):
        raise NotImplementedError

    def load(self, artifact, input_shape):
        raise NotImplementedError


def test_shipped_backends_are_registered_and_load():
    assert set(BACKENDS) | {"roofline"} == set(backend_names())
    for name in backend_names():
        cls = backend_class(name)
        assert issubclass(cls, Backend) and cls.name == name
    ort = get_backend("onnxruntime", BackendOptions(threads=1))
    assert ort.options.threads == 1 and ort.default_threads() is not None  # a CPU backend: the profiler picks threads
    assert get_backend("onnxruntime", BackendOptions(device="cuda")).default_threads() is None
    assert get_backend("tensorrt").default_subsample == 2 and get_backend("torch").default_subsample == 1
    assert get_backend("roofline").measures is False and get_backend("torch").measures is True


def test_unknown_name_is_one_line_listing_the_known_ones():
    with pytest.raises(EdgedynError) as info:
        get_backend("tflite")
    msg = str(info.value)
    assert "\n" not in msg and "'tflite'" in msg
    for name in ("onnxruntime", "roofline", "tensorrt", "torch"):
        assert name in msg
    register_backend("toy", ToyBackend)
    with pytest.raises(EdgedynError, match="toy"):  # the list follows the registry
        get_backend("tflite")


def test_a_registered_class_is_found_with_its_options():
    register_backend("toy", ToyBackend)
    backend = get_backend("toy", BackendOptions(precision="fp16"))
    assert isinstance(backend, ToyBackend) and backend.options.precision == "fp16"
    assert "toy" in backend_names()
    # measuring defaults: plain layout, no thread choice, no estimate
    assert backend.measures and backend.default_threads() is None and backend.layout().kind == "plain"
    with pytest.raises(EdgedynError, match="no analytic estimate"):
        backend.estimate_ms(None)


def test_registering_a_target_imports_nothing_until_asked(tmp_path, monkeypatch):
    module = "edgedyn_toy_backend_for_test"
    (tmp_path / f"{module}.py").write_text(textwrap.dedent("""
        from edgedyn.backends.roofline import RooflineBackend

        class LazyToy(RooflineBackend):
            name = "lazy-toy"
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, module, raising=False)
    register_backend("lazy-toy", f"{module}:LazyToy")
    assert module not in sys.modules  # registering does not import
    backend = get_backend("lazy-toy")
    assert module in sys.modules and type(backend).__name__ == "LazyToy"


def test_bad_targets_are_one_line_errors(tmp_path, monkeypatch):
    with pytest.raises(EdgedynError, match="package.module:ClassName"):
        register_backend("toy", "no_colon_here")
    with pytest.raises(EdgedynError, match="non-empty"):
        register_backend("", ToyBackend)
    register_backend("ghost", "edgedyn_no_such_module_xyz:Ghost")
    with pytest.raises(EdgedynError, match="cannot import edgedyn_no_such_module_xyz:Ghost") as info:
        get_backend("ghost")
    assert "\n" not in str(info.value)
    register_backend("not-a-backend", "pathlib:Path")
    with pytest.raises(EdgedynError, match="is not a Backend class"):
        get_backend("not-a-backend")


def test_importing_the_package_imports_no_backend_module():
    code = ("import sys, edgedyn.backends\n"
            "print(sorted(m for m in sys.modules if m.startswith('edgedyn.backends.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT,
                         env={"PYTHONPATH": str(ROOT), "PATH": ""})
    assert out.stdout.split("\n")[0] == "['edgedyn.backends.base', 'edgedyn.backends.registry']"
