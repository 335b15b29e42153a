"""The GELU engine in HLS: ``include/tessera/gelu.h`` instantiated from a
:class:`~tessera.models.gelu.GeluConfig`.

This module is the GELU entry of the HLS engine registry (:data:`ENGINE`) and converts between
arrays of codes and the engine's streams with the RTL's own byte layout
(:func:`~tessera.sim.gelu.pack_beats`, :func:`~tessera.sim.gelu.unpack_beats`), so the same vectors
drive the golden model, the RTL and the C-simulation.

The ROM reaches the kernel as ``CONFIG_T`` members ``gelu_rom_000`` ... (one per word of
:func:`~tessera.models.gelu.gelu_rom`, hexadecimal index), which ``gelu.h`` gathers into one ROM per
lane.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from tessera.hls.engine import (
    ConfigConstant,
    HlsEngine,
    KernelInterface,
    OutputBeats,
    ScalarArg,
    StreamCase,
    StreamPort,
)
from tessera.models.gelu import GeluConfig, extreme_codes, gelu, gelu_rom, pack_beats, unpack_beats

if TYPE_CHECKING:
    from tessera.hls.csim import CsimLibrary

__all__ = [
    "BEATS_BITS",
    "ENGINE",
    "csim_gelu",
    "gelu_interface",
    "gelu_stream_case",
    "gelu_stream_inputs",
]

#: Width of the ``beats`` run-time argument.
BEATS_BITS = 32


def gelu_interface(cfg: GeluConfig) -> KernelInterface:
    """The kernel interface of ``cfg``: ``CONFIG_T`` constants, streams and run-time argument."""
    constants = (
        ConfigConstant("in_bits", cfg.in_bits, doc="input and output width (signed)"),
        ConfigConstant("in_frac", cfg.in_frac, doc="input and output fraction bits"),
        ConfigConstant("rom_entries", cfg.rom_entries, doc="delta samples in the ROM"),
        ConfigConstant("rom_bits", cfg.rom_bits, doc="ROM word width (unsigned)"),
        ConfigConstant("low_bits", cfg.low_bits, doc="interpolation weight bits"),
        ConfigConstant("align_shift", cfg.align_shift, doc="rounding shift to the output"),
        ConfigConstant("lanes", cfg.lanes, doc="elements per beat"),
        ConfigConstant("container_bits", cfg.container_bits, doc="bits per lane on the stream"),
        ConfigConstant("beats_bits", BEATS_BITS, doc="width of the beats argument"),
        *(
            ConfigConstant(f"gelu_rom_{k:03x}", int(v), doc=f"ROM word {k}")
            for k, v in enumerate(gelu_rom(cfg))
        ),
    )
    beat_bytes = cfg.beat_bits // 8
    lane = f"{cfg.lanes} lanes of signed {cfg.in_bits} bits ({cfg.in_frac} fraction bits)"
    streams = (
        StreamPort("x", "in", "beat_t", beat_bytes, doc=f"inputs: {lane}"),
        StreamPort(
            "y",
            "out",
            "beat_t",
            beat_bytes,
            lanes=cfg.lanes,
            lane_bits=cfg.container_bits,
            doc=f"GELU of every lane: {lane}",
        ),
    )
    scalars = (ScalarArg("beats", "beats_t", BEATS_BITS, doc="beats in this run"),)
    return KernelInterface(
        engine="gelu",
        kernel="tessera::gelu",
        traits="tessera::gelu_types",
        base_config="tessera::gelu_config",
        headers=("exp.h", "gelu.h"),
        constants=constants,
        streams=streams,
        scalars=scalars,
    )


def gelu_stream_inputs(
    cfg: GeluConfig, x: npt.ArrayLike
) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Input stream and run-time argument for which the engine computes ``gelu(x, cfg)``.

    The codes are taken in C order, ``lanes`` per beat; the last beat is padded with zeros.

    Raises
    ------
    ValueError
        Non-integer codes, codes outside ``in_bits``, or an empty array.
    """
    arr = cfg.check_input(x).ravel()
    if arr.size == 0:
        raise ValueError("GELU needs at least one input code")
    data = np.frombuffer(pack_beats(arr, cfg), dtype=np.uint8).reshape(-1, cfg.beat_bits // 8)
    return {"x": data}, {"beats": len(data)}


def gelu_stream_case(cfg: GeluConfig, x: npt.ArrayLike, name: str = "") -> StreamCase:
    """A :class:`StreamCase` of codes ``x`` with the golden outputs (padding lanes included)."""
    inputs, scalars = gelu_stream_inputs(cfg, x)
    flat = np.asarray(x).ravel()
    padded = np.concatenate([flat, np.zeros(-len(flat) % cfg.lanes, dtype=np.int64)])
    values = gelu(padded, cfg).reshape(-1, cfg.lanes)
    beats = len(values)
    expected = OutputBeats(values, np.ones_like(values, dtype=bool), np.zeros(beats, dtype=bool))
    return StreamCase(name or f"{flat.size} codes", scalars, inputs, {"y": expected})


def csim_gelu(
    cfg: GeluConfig, x: npt.ArrayLike, *, library: CsimLibrary | None = None
) -> np.ndarray:
    """C-simulate the HLS GELU kernel of ``cfg``: the same result as ``models.gelu.gelu``.

    The codes go through the kernel's ``x`` stream packed as the RTL receives them
    (:func:`~tessera.sim.gelu.pack_beats`) and come back through
    :func:`~tessera.sim.gelu.unpack_beats`.

    Parameters
    ----------
    cfg : GeluConfig
        Engine configuration.
    x : array_like of int
        Raw input codes (any shape, at least one element).
    library : CsimLibrary, optional
        A library holding ``cfg`` (from :func:`tessera.hls.csim.build_csim`).

    Returns
    -------
    ndarray of int64, the shape of ``x``
        Raw outputs.

    Raises
    ------
    ValueError
        Bad codes (see :func:`gelu_stream_inputs`).
    CsimError
        A build failure, or the kernel broke the stream protocol.
    """
    from tessera.hls.csim import CsimError, csim_library

    if not isinstance(cfg, GeluConfig):
        raise ValueError(f"cfg must be a GeluConfig, got {type(cfg).__name__}")
    shape = np.shape(x)
    inputs, scalars = gelu_stream_inputs(cfg, x)
    beats = scalars["beats"]
    lib = library if library is not None else csim_library(cfg)
    out = lib.run(cfg, inputs, scalars, {"y": beats})["y"]
    if len(out.values) != beats:
        raise CsimError(f"{cfg.short_name}: y stream has {len(out.values)} beats, expected {beats}")
    nbytes = cfg.container_bits // 8
    words = out.values.reshape(-1) & ((1 << cfg.container_bits) - 1)
    data = words.astype("<u8").view(np.uint8).reshape(-1, 8)[:, :nbytes].tobytes()
    return unpack_beats(data, cfg)[: int(np.prod(shape, dtype=np.int64))].reshape(shape)


def _default_cases(cfg: GeluConfig) -> list[StreamCase]:
    """Small testbench vectors: random codes, every code around 0 and ``+-range``, and the
    extreme codes (:func:`tessera.models.gelu.extreme_codes`)."""
    rng = np.random.default_rng(1)
    random = rng.integers(cfg.code_min, cfg.code_max + 1, size=4 * cfg.lanes + 1)
    sweep = np.concatenate(
        [np.arange(c - cfg.lanes, c + cfg.lanes) for c in (-cfg.range_code, 0, cfg.range_code)]
    )
    sweep = np.clip(sweep, cfg.code_min, cfg.code_max)
    return [
        gelu_stream_case(cfg, random.astype(np.int64), "random"),
        gelu_stream_case(cfg, sweep.astype(np.int64), "sweep"),
        gelu_stream_case(cfg, extreme_codes(cfg), "extreme"),
    ]


#: Registry entry of the GELU engine.
ENGINE = HlsEngine(
    name="gelu",
    config_type=GeluConfig,
    interface=gelu_interface,
    default_cases=_default_cases,
)
