"""tessera.hls: Vitis HLS C++ for the engines, from the config behind the golden model and RTL.

* ``include/tessera/*.h``: hand-written, templated kernels parameterised by a ``CONFIG_T``
  struct (hls4ml style): :file:`gemm.h` (temporal tiled GEMM), :file:`softmax.h` (online
  softmax), :file:`gelu.h` (GELU ROM), :file:`layernorm.h`, :file:`attention.h` (query
  parallelism P), :file:`exp.h` (base-2 exp, reciprocal), :file:`requant.h` (rounding, overflow,
  requantization), :file:`stream.h` (bus-to-slice adaptation), :file:`axis.h` and
  :file:`stream_io.h` (AXI4-Stream beats; host-side stream helpers).
* :mod:`tessera.hls.engine`: the engine registry and the interface description an engine gives.
* :mod:`tessera.hls.generate`: :func:`generate_hls` writes a Vitis HLS project (config header, top
  function, testbench with golden vectors, run_hls.tcl, Makefile) through Jinja2 templates.
* :mod:`tessera.hls.csim`: g++ C-simulation through ctypes (:func:`csim_gemm`), cached builds;
  each engine module (:mod:`tessera.hls.softmax`, ``gelu``, ``layernorm``, ``attention``) has its
  ``csim_<engine>``.
* :mod:`tessera.hls.hls4ml_bridge`: torch MLPs through hls4ml with tessera's fixed-point formats.
"""

from tessera.hls.csim import CsimError, CsimLibrary, build_csim, csim_gemm, csim_library
from tessera.hls.engine import HlsEngine, KernelInterface, engine_for, register_engine
from tessera.hls.generate import DEFAULT_CLOCK_MHZ, DEFAULT_PART, generate_hls, render_hls

__all__ = [
    "DEFAULT_CLOCK_MHZ",
    "DEFAULT_PART",
    "CsimError",
    "CsimLibrary",
    "HlsEngine",
    "KernelInterface",
    "build_csim",
    "csim_gemm",
    "csim_library",
    "engine_for",
    "generate_hls",
    "register_engine",
    "render_hls",
]
