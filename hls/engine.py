"""What an HLS engine declares to tessera's generator, and the registry of engines.

An engine (GEMM, softmax, attention ...) is one hand-written, templated kernel header in
``include/tessera/`` plus one :class:`HlsEngine` entry that says, for a config object of the
engine, how the generic templates instantiate it:

* :class:`KernelInterface`: the C++ kernel function and traits struct, the ``CONFIG_T``
  constants (:class:`ConfigConstant`), the AXI4-Stream ports (:class:`StreamPort`) and the
  run-time ``s_axilite`` arguments (:class:`ScalarArg`) of the top function, in argument order;
* default testbench vectors (:class:`StreamCase`, computed with the golden model).

From these alone the templates write the config header, the top function, the ctypes C-simulation
entry and the Vitis testbench, and :mod:`tessera.hls.csim` marshals numpy arrays in and out, so a
new engine needs no template or build code of its own. Adding one (``softmax`` as the example):

1. ``include/tessera/softmax.h``: in ``namespace tessera``, a default ``struct softmax_config``
   (``static const`` members), ``template <class CONFIG_T> struct softmax_types`` whose member
   typedefs are the port types, and the kernel
   ``template <class CONFIG_T> void softmax(streams..., scalars...)`` taking the streams by
   reference, then the scalars by value, in interface order. An input stream's beat is
   ``ap_uint<8 * beat_bytes>``; an output's is ``ap_uint<lanes * lane_bits>`` or, with
   ``side_channels``, ``tessera::axis_beat<lanes * lane_bits>`` (``axis.h``: keep / strb / last).
   Reuse ``requant.h`` (rounding, saturation) and ``stream.h`` (bus-to-slice adaptation);
   template internal stages on the few values they use rather than on ``CONFIG_T``, so configs
   that differ elsewhere share instances (faster C-sim builds).
2. ``hls/softmax.py``: ``softmax_interface(cfg) -> KernelInterface`` (headers listed with the
   kernel header last), a golden-model :class:`StreamCase` builder, and
   ``ENGINE = HlsEngine("softmax", SoftmaxConfig, softmax_interface, default_cases)``; a
   ``csim_softmax(cfg, ...)`` packs its arrays into input bytes and scalars, calls
   ``tessera.hls.csim.csim_library(cfg).run(cfg, inputs, scalars, capacity)`` and unpacks the
   returned :class:`OutputBeats`.
3. Append ``"tessera.hls.softmax"`` to :data:`BUILTIN_ENGINE_MODULES` (out-of-tree engines call
   :func:`register_engine` instead).

The config must be an :class:`~tessera.models.config.EngineConfig` with ``short_name`` (it names
the top function and files) and ``digest``.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

__all__ = [
    "BUILTIN_ENGINE_MODULES",
    "ConfigConstant",
    "HlsEngine",
    "KernelInterface",
    "OutputBeats",
    "ScalarArg",
    "StreamCase",
    "StreamPort",
    "c_identifier",
    "check_identifier",
    "engine_for",
    "register_engine",
    "registered_engines",
]

#: Modules that define the built-in engines (each has a module-level ``ENGINE``).
BUILTIN_ENGINE_MODULES: tuple[str, ...] = (
    "tessera.hls.gemm",
    "tessera.hls.softmax",
    "tessera.hls.gelu",
    "tessera.hls.layernorm",
    "tessera.hls.attention",
)

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# C++ keywords and alternative tokens that are not Python keywords as well.
_CPP_RESERVED = frozenset(
    """alignas alignof and and_eq asm auto bitand bitor bool break case catch char char8_t
    char16_t char32_t class compl concept const consteval constexpr constinit const_cast continue
    co_await co_return co_yield decltype default delete do double dynamic_cast else enum explicit
    export extern false float for friend goto if inline int long mutable namespace new noexcept
    not not_eq nullptr operator or or_eq private protected public register reinterpret_cast
    requires return short signed sizeof static static_assert static_cast struct switch template
    this thread_local throw true try typedef typeid typename union unsigned using virtual void
    volatile wchar_t while xor xor_eq main""".split()
)


def check_identifier(name: str) -> str:
    """Return ``name`` if it is a safe C++ / Tcl identifier, else raise ``ValueError``.

    Safe means ``[A-Za-z_][A-Za-z0-9_]*``, not a C++ keyword, and not reserved to the
    implementation (a leading ``__`` or ``_`` + capital letter).
    """
    if not isinstance(name, str) or not _IDENTIFIER.match(name):
        raise ValueError(f"{name!r} is not an identifier [A-Za-z_][A-Za-z0-9_]*")
    if name in _CPP_RESERVED or name.startswith("__") or re.match(r"_[A-Z]", name):
        raise ValueError(f"{name!r} is a reserved C++ name; choose another")
    return name


def c_identifier(name: str) -> str:
    """Sanitise ``name`` into a safe identifier (see :func:`check_identifier`).

    Characters outside ``[A-Za-z0-9_]`` become ``_``, runs of ``_`` collapse, a leading digit or
    underscore gets a ``t`` prefix and a C++ keyword a ``_`` suffix.

    Raises
    ------
    ValueError
        If ``name`` holds no letter or digit at all.
    """
    if not isinstance(name, str):
        raise ValueError(f"a name must be a string, got {name!r}")
    text = re.sub(r"_+", "_", re.sub(r"[^A-Za-z0-9_]", "_", name))
    if not re.search(r"[A-Za-z0-9]", text):
        raise ValueError(f"{name!r} has no letter or digit to make an identifier from")
    if text[0].isdigit() or text[0] == "_":
        text = "t" + (text if text[0] == "_" else "_" + text)
    if text in _CPP_RESERVED:
        text += "_"
    return check_identifier(text)


@dataclass(frozen=True)
class ConfigConstant:
    """One ``static const`` member of the generated ``CONFIG_T`` struct.

    Parameters
    ----------
    name : str
        Member name, as the kernel reads it (``CONFIG_T::rows``).
    value : int or str
        An integer, or an enumerator name such as ``"AP_RND_CONV"``.
    ctype : str
        ``"unsigned"``, ``"int"``, ``"bool"``, ``"ap_q_mode"`` or ``"ap_o_mode"``.
    doc : str
        One-line comment written next to the member.
    """

    name: str
    value: int | str
    ctype: str = "unsigned"
    doc: str = ""

    def __post_init__(self) -> None:
        check_identifier(self.name)
        if self.ctype not in ("unsigned", "int", "bool", "ap_q_mode", "ap_o_mode"):
            raise ValueError(f"constant {self.name}: unsupported ctype {self.ctype!r}")
        if isinstance(self.value, str):
            check_identifier(self.value)
        elif isinstance(self.value, bool) or not isinstance(self.value, int | np.integer):
            raise ValueError(f"constant {self.name}: value must be an int or an enumerator name")
        elif self.ctype == "unsigned" and self.value < 0:
            raise ValueError(f"constant {self.name}: unsigned value {self.value} is negative")

    @property
    def literal(self) -> str:
        """The value as C++ source (``4u``, ``-3``, ``true``, ``AP_SAT``)."""
        if isinstance(self.value, str):
            return self.value
        if self.ctype == "bool":
            return "true" if self.value else "false"
        return f"{int(self.value)}u" if self.ctype == "unsigned" else str(int(self.value))


@dataclass(frozen=True)
class StreamPort:
    """One AXI4-Stream argument of the top function.

    Parameters
    ----------
    name : str
        Argument name (also the ``axis`` port name).
    direction : {"in", "out"}
        Input streams are fed from bytes; output streams are read back as lanes.
    type_name : str
        Member typedef of the kernel's traits struct giving the beat type (``a_beat_t``).
    beat_bytes : int
        Data bytes per beat (``TDATA`` width / 8).
    lanes, lane_bits : int
        Output streams: the data splits into ``lanes`` signed lanes of ``lane_bits`` (at most
        32) bits, lane 0 in the low bits. Ignored for inputs.
    side_channels : bool
        The beat is a :cpp:`tessera::axis_beat` (``data``, ``keep``, ``strb``, ``last``) rather
        than a plain ``ap_uint``; a lane is valid when all its ``keep`` bits are set. Outputs only.
    doc : str
        One-line description (README and comments).
    """

    name: str
    direction: Literal["in", "out"]
    type_name: str
    beat_bytes: int
    lanes: int = 0
    lane_bits: int = 0
    side_channels: bool = False
    doc: str = ""

    def __post_init__(self) -> None:
        check_identifier(self.name)
        check_identifier(self.type_name)
        if self.direction not in ("in", "out"):
            raise ValueError(f"stream {self.name}: direction must be 'in' or 'out'")
        if not 1 <= self.beat_bytes <= 4096:
            raise ValueError(f"stream {self.name}: beat_bytes must be in [1, 4096]")
        if self.direction == "in" and self.side_channels:
            raise ValueError(f"stream {self.name}: input streams carry data only")
        if self.direction == "out":
            if not 1 <= self.lane_bits <= 32 or self.lanes < 1:
                raise ValueError(f"stream {self.name}: outputs need lanes >= 1, lane_bits 1..32")
            if self.lanes * self.lane_bits != self.beat_bytes * 8:
                raise ValueError(f"stream {self.name}: lanes * lane_bits != beat_bytes * 8")
            if self.side_channels and self.lane_bits % 8:
                raise ValueError(f"stream {self.name}: keep needs whole-byte lanes")


@dataclass(frozen=True)
class ScalarArg:
    """One run-time (``s_axilite``) argument of the top function.

    Parameters
    ----------
    name : str
        Argument name (also the register name Vitis gives it).
    type_name : str
        Member typedef of the kernel's traits struct (``dim_t``).
    bits : int
        Width, 1..63.
    signed : bool
        Two's complement when true.
    doc : str
        One-line description.
    """

    name: str
    type_name: str
    bits: int
    signed: bool = False
    doc: str = ""

    def __post_init__(self) -> None:
        check_identifier(self.name)
        check_identifier(self.type_name)
        if not 1 <= self.bits <= 63:
            raise ValueError(f"scalar {self.name}: bits must be in [1, 63]")

    @property
    def range(self) -> tuple[int, int]:
        """Inclusive range of values the argument holds."""
        if self.signed:
            return -(1 << (self.bits - 1)), (1 << (self.bits - 1)) - 1
        return 0, (1 << self.bits) - 1


@dataclass(frozen=True)
class KernelInterface:
    """How the generic templates instantiate one engine config.

    Parameters
    ----------
    engine : str
        Engine name (``"gemm"``).
    kernel : str
        Qualified C++ kernel function template, called as
        ``kernel<CONFIG>(streams..., scalars...)``.
    traits : str
        Qualified traits class template whose member typedefs are the port types.
    base_config : str
        Qualified default config struct the generated ``CONFIG_T`` derives from.
    headers : tuple of str
        Files of ``include/tessera/`` the kernel needs, the kernel header last (it is the one
        the config header includes).
    constants : tuple of ConfigConstant
        ``CONFIG_T`` members.
    streams : tuple of StreamPort
        Stream arguments, in order (they come first in the top function).
    scalars : tuple of ScalarArg
        Run-time arguments, in order (after the streams).
    """

    engine: str
    kernel: str
    traits: str
    base_config: str
    headers: tuple[str, ...]
    constants: tuple[ConfigConstant, ...]
    streams: tuple[StreamPort, ...]
    scalars: tuple[ScalarArg, ...]

    def __post_init__(self) -> None:
        for qualified in (self.kernel, self.traits, self.base_config):
            for part in qualified.split("::"):
                check_identifier(part)
        for header in self.headers:
            if not re.fullmatch(r"[a-z0-9_]+\.h", header):
                raise ValueError(f"header {header!r} must be a plain name like 'gemm.h'")
        names = [p.name for p in self.streams] + [s.name for s in self.scalars]
        if len(set(names)) != len(names):
            raise ValueError(f"argument names repeat: {names}")
        if not any(p.direction == "out" for p in self.streams):
            raise ValueError("a kernel needs at least one output stream")

    @property
    def inputs(self) -> tuple[StreamPort, ...]:
        """Input streams, in argument order."""
        return tuple(p for p in self.streams if p.direction == "in")

    @property
    def outputs(self) -> tuple[StreamPort, ...]:
        """Output streams, in argument order."""
        return tuple(p for p in self.streams if p.direction == "out")

    @property
    def kernel_header(self) -> str:
        """The header that declares the kernel (the last of :attr:`headers`)."""
        return self.headers[-1]

    @property
    def ap_int_max_w(self) -> int:
        """``AP_INT_MAX_W`` the ports need: their widest ``ap_uint``, rounded up to 1024."""
        widest = max(p.beat_bytes * 8 for p in self.streams)
        return max(1024, -(-widest // 1024) * 1024)


@dataclass(frozen=True)
class OutputBeats:
    """The beats of one output stream, as lanes.

    Attributes
    ----------
    values : ndarray of int64, shape (beats, lanes)
        Signed lane values.
    valid : ndarray of bool, shape (beats, lanes)
        Lanes whose ``keep`` bits are all set (all True for streams without side channels).
    last : ndarray of bool, shape (beats,)
        ``TLAST`` of each beat (all False for streams without side channels).
    """

    values: np.ndarray
    valid: np.ndarray
    last: np.ndarray


@dataclass(frozen=True)
class StreamCase:
    """One run of a kernel in stream form: scalars, input bytes, expected outputs.

    Attributes
    ----------
    name : str
        Label (testbench messages).
    scalars : dict of str to int
        A value for every :class:`ScalarArg`.
    inputs : dict of str to ndarray of uint8, shape (beats, beat_bytes)
        The bytes of every input stream, beat by beat.
    outputs : dict of str to OutputBeats
        Expected beats of every output stream (golden model).
    """

    name: str
    scalars: Mapping[str, int]
    inputs: Mapping[str, np.ndarray]
    outputs: Mapping[str, OutputBeats] = field(default_factory=dict)


@dataclass(frozen=True)
class HlsEngine:
    """Registry entry of an HLS engine.

    Parameters
    ----------
    name : str
        Engine name; also the ``engine`` field of ``config.json``.
    config_type : type
        The engine's frozen config dataclass (``GemmConfig``).
    interface : callable
        ``interface(cfg) -> KernelInterface``.
    default_cases : callable
        ``default_cases(cfg) -> list[StreamCase]``: small testbench vectors with golden outputs,
        written to ``tb_data/`` when no cases are given.
    """

    name: str
    config_type: type
    interface: Callable[[Any], KernelInterface]
    default_cases: Callable[[Any], list[StreamCase]]

    def __post_init__(self) -> None:
        check_identifier(self.name)


_ENGINES: dict[type, HlsEngine] = {}
_BUILTINS_LOADED = False


def register_engine(engine: HlsEngine) -> HlsEngine:
    """Add ``engine`` to the registry (replacing any entry for the same config type)."""
    _ENGINES[engine.config_type] = engine
    return engine


def registered_engines() -> dict[str, HlsEngine]:
    """All engines by name, the built-in ones imported on first use."""
    global _BUILTINS_LOADED
    if not _BUILTINS_LOADED:
        for module in BUILTIN_ENGINE_MODULES:
            register_engine(importlib.import_module(module).ENGINE)
        _BUILTINS_LOADED = True
    return {engine.name: engine for engine in _ENGINES.values()}


def engine_for(cfg: Any) -> HlsEngine:
    """Return the engine of a config object.

    Raises
    ------
    ValueError
        If no registered engine takes configs of this type.
    """
    engines = registered_engines()
    engine = _ENGINES.get(type(cfg))
    if engine is None:
        known = ", ".join(f"{e.name} ({e.config_type.__name__})" for e in engines.values())
        raise ValueError(
            f"no HLS engine for {type(cfg).__name__}; registered engines: {known}. "
            "Add one with tessera.hls.engine.register_engine"
        )
    return engine
