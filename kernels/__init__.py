"""Triton kernels of the sweep engine, importable as ``interp.kernels``.

Each kernel has a plain PyTorch reference beside it and is tested against it (on CPU through
``TRITON_INTERPRET=1``). The sweep engine is its own issue; this package is empty until then.
"""
