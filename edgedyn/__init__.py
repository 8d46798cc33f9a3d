"""edgedyn: one CNN at many speeds on edge hardware.

The package is organised by what each part does:

- :mod:`edgedyn.dynamic`  dynamic-width network, coupling groups, sub-net specs, extraction
- :mod:`edgedyn.backends` execution backends (onnxruntime, torch, tensorrt) behind one interface
- :mod:`edgedyn.cli`      the thin ``edgedyn`` command line over the Python API
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
