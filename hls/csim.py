"""C-simulation of the HLS kernels: g++ -> shared library -> ctypes -> numpy.

The generated C++ (top function, config header, ``extern "C"`` entry, kernel headers) is compiled
with g++ against the ap_types headers that ship with hls4ml, into a shared library cached under a
content hash of (sources, flags, g++ version, ap_types location and version). Several engine
configs can share one library (one g++ run; :func:`build_csim`), which keeps test suites fast.

A library is built in a private temporary directory and renamed into the cache whole, under a
file lock, so concurrent threads and processes (pytest-xdist) never see a half-built library.

Environment variables: ``TESSERA_CACHE_DIR`` (cache root; libraries go to its ``csim/``, default
``~/.cache/tessera/csim``) and ``TESSERA_AP_TYPES`` (an ap_types include directory to use instead
of hls4ml's).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from tessera.hls.engine import KernelInterface, OutputBeats
from tessera.hls.gemm import gemm_from_beats, gemm_stream_inputs
from tessera.hls.generate import HlsDesign, hls_design, render_csim_bundle
from tessera.models.gemm import GemmConfig, Requant, gemm_tiles

__all__ = [
    "CXXFLAGS",
    "BuildResult",
    "CsimError",
    "CsimLibrary",
    "ap_types_dir",
    "build_csim",
    "compile_cpp",
    "csim_gemm",
    "csim_library",
    "default_cache_dir",
]

#: g++ flags of every C-sim build (``-shared`` is added for libraries). The warnings silenced
#: are those the ap_types headers and HLS pragmas raise under g++.
CXXFLAGS: tuple[str, ...] = (
    "-O2",
    "-std=c++14",
    "-fPIC",
    "-Wno-unknown-pragmas",
    "-Wno-uninitialized",
    "-Wno-maybe-uninitialized",
    "-Wno-int-in-bool-context",
    "-Wno-unused-label",
)
AP_TYPES_FIX = "pip install hls4ml==1.3.0"
GXX_FIX = "apt-get install -y g++"
COMPILE_TIMEOUT_S = 900
MESSAGE_BYTES = 512


class CsimError(RuntimeError):
    """A C-simulation build or run failed, or a tool it needs is missing.

    Attributes
    ----------
    log : pathlib.Path or None
        The compiler log of a failed build.
    tool : str or None
        The missing tool (``"g++"``, ``"ap_types"``), if that is the cause.
    fix : str or None
        How to install the missing tool.
    """

    def __init__(
        self,
        message: str,
        log: Path | None = None,
        *,
        tool: str | None = None,
        fix: str | None = None,
    ) -> None:
        super().__init__(f"{message}; fix: {fix}" if fix else message)
        self.log = log
        self.tool = tool
        self.fix = fix


def _missing(tool: str, fix: str, detail: str) -> CsimError:
    return CsimError(f"{tool} not found ({detail})", tool=tool, fix=fix)


def default_cache_dir() -> Path:
    """``$TESSERA_CACHE_DIR/csim`` when that variable is set, else ``~/.cache/tessera/csim``."""
    root = os.environ.get("TESSERA_CACHE_DIR")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "tessera"
    return base / "csim"


def ap_types_dir() -> Path:
    """Directory holding ``ap_int.h`` and ``hls_stream.h`` for g++.

    ``$TESSERA_AP_TYPES`` if set, else ``<hls4ml package>/templates/vivado/ap_types`` (found
    without importing hls4ml).

    Raises
    ------
    CsimError
        If the directory or ``ap_int.h`` in it is missing.
    """
    override = os.environ.get("TESSERA_AP_TYPES")
    if override:
        path = Path(override).expanduser()
        where = f"TESSERA_AP_TYPES={override}"
    else:
        spec = importlib.util.find_spec("hls4ml")
        if spec is None or not spec.submodule_search_locations:
            raise _missing("ap_types", AP_TYPES_FIX, "hls4ml, which ships them, is not installed")
        path = Path(next(iter(spec.submodule_search_locations))) / "templates/vivado/ap_types"
        where = str(path)
    if not (path / "ap_int.h").is_file() or not (path / "hls_stream.h").is_file():
        raise _missing("ap_types", AP_TYPES_FIX, f"no ap_int.h / hls_stream.h in {where}")
    return path


def _compiler() -> tuple[str, str]:
    """(path, version) of g++; CsimError when it is missing."""
    exe = shutil.which("g++")
    version = _gxx_version(exe) if exe else None
    if exe is None or version is None:
        raise _missing("g++", GXX_FIX, "needed for HLS C-simulation")
    return exe, version


_VERSIONS: dict[str, str | None] = {}


def _gxx_version(exe: str) -> str | None:
    if exe not in _VERSIONS:
        try:
            proc = subprocess.run(
                [exe, "-dumpfullversion", "-dumpversion"],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            _VERSIONS[exe] = (proc.stdout.strip() or None) if proc.returncode == 0 else None
        except (OSError, subprocess.SubprocessError):
            _VERSIONS[exe] = None
    return _VERSIONS[exe]


def _ap_types_identity(path: Path) -> str:
    try:
        version = importlib.metadata.version("hls4ml")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    # The headers' sizes and mtimes catch a replaced tree without reading it all.
    stats = sorted(
        (p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in path.glob("*.h") if p.is_file()
    )
    return json.dumps([str(path), version, stats])


@dataclass(frozen=True)
class BuildResult:
    """A compiled artifact in the cache.

    Attributes
    ----------
    path : pathlib.Path
        The shared library or executable.
    key : str
        Content hash it is cached under.
    cached : bool
        True when it came from the cache (no compiler run).
    seconds : float
        Wall time of this call (compile included when not cached).
    log : pathlib.Path
        The compiler log.
    """

    path: Path
    key: str
    cached: bool
    seconds: float
    log: Path


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


_THREAD_LOCK = threading.Lock()


def compile_cpp(
    files: Mapping[str, str],
    sources: Sequence[str],
    *,
    name: str,
    kind: Literal["shared", "executable"] = "shared",
    cache_dir: str | os.PathLike[str] | None = None,
) -> BuildResult:
    """Compile C++ sources with g++ and the ap_types headers, cached by content.

    Parameters
    ----------
    files : mapping of str to str
        Relative path -> text of every file the build reads (sources and local headers); they are
        written to a directory that is on the include path, as is its ``include/``.
    sources : sequence of str
        The entries of ``files`` to compile.
    name : str
        Label of the cache entry and of the artifact (letters, digits, ``_``, ``-``).
    kind : {"shared", "executable"}
        A ``-shared`` library for ctypes, or a program (e.g. a testbench).
    cache_dir : path, optional
        Cache directory; default :func:`default_cache_dir`.

    Returns
    -------
    BuildResult

    Raises
    ------
    CsimError
        g++ or the ap_types headers are missing, or the compiler failed; the message names the
        log file, kept with the sources under ``<cache>/failed/``.
    ValueError
        Bad arguments (a source not in ``files``, a path leaving the build directory...).
    """
    start = time.perf_counter()
    if kind not in ("shared", "executable"):
        raise ValueError(f"kind must be 'shared' or 'executable', got {kind!r}")
    if not name or not all(ch.isalnum() or ch in "_-" for ch in name):
        raise ValueError(f"name must be letters, digits, '_' or '-', got {name!r}")
    for rel in files:
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise ValueError(f"file {rel!r} must be a relative path inside the build directory")
    missing = [s for s in sources if s not in files]
    if missing or not sources:
        raise ValueError(f"sources must name entries of files; missing: {missing}")
    gxx, version = _compiler()
    ap_types = ap_types_dir()
    flags = [*CXXFLAGS, *(["-shared"] if kind == "shared" else [])]
    digest = hashlib.sha256()
    digest.update(
        json.dumps(
            {
                "flags": flags,
                "sources": list(sources),
                "kind": kind,
                "compiler": [gxx, version],
                "ap_types": _ap_types_identity(ap_types),
            },
            sort_keys=True,
        ).encode()
    )
    for rel in sorted(files):
        digest.update(f"\0{rel}\0{len(files[rel])}\0".encode())
        digest.update(files[rel].encode())
    key = digest.hexdigest()[:20]
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    entry = cache / f"{name}-{key}"
    artifact_name = f"lib{name}.so" if kind == "shared" else name
    artifact = entry / artifact_name
    if artifact.is_file():
        return BuildResult(artifact, key, True, time.perf_counter() - start, entry / "build.log")

    with _THREAD_LOCK, _file_lock(cache / ".locks" / f"{name}-{key}.lock"):
        if artifact.is_file():  # built by another process while this one waited
            return BuildResult(
                artifact, key, True, time.perf_counter() - start, entry / "build.log"
            )
        staging = Path(tempfile.mkdtemp(prefix=f".build-{name}-", dir=cache))
        try:
            for rel, text in files.items():
                path = staging / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
            command = [
                gxx,
                *flags,
                "-I.",
                "-Iinclude",
                f"-I{ap_types}",
                *sources,
                "-o",
                artifact_name,
            ]
            try:
                proc = subprocess.run(
                    command,
                    cwd=staging,
                    capture_output=True,
                    text=True,
                    timeout=COMPILE_TIMEOUT_S,
                    check=False,
                )
                output, returncode = proc.stdout + proc.stderr, proc.returncode
            except subprocess.TimeoutExpired:
                output, returncode = f"g++ timed out after {COMPILE_TIMEOUT_S} s\n", -1
            (staging / "build.log").write_text(
                f"cwd: {entry}\ncommand: {' '.join(command)}\nexit: {returncode}\n\n{output}"
            )
            if returncode != 0 or not (staging / artifact_name).is_file():
                failed = cache / "failed" / entry.name
                failed.parent.mkdir(parents=True, exist_ok=True)
                shutil.rmtree(failed, ignore_errors=True)
                os.rename(staging, failed)
                log = failed / "build.log"
                first = next((ln for ln in output.splitlines() if "error" in ln), "")
                raise CsimError(
                    f"g++ failed to build {name} (exit {returncode}): {first.strip()}\n"
                    f"full log: {log}",
                    log,
                )
            # Whole directory in one rename: readers see all of it or none of it.
            os.rename(staging, entry)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return BuildResult(artifact, key, False, time.perf_counter() - start, entry / "build.log")


_ARGTYPES = [ctypes.c_void_p] * 8 + [ctypes.c_char_p, ctypes.c_uint64]


class CsimLibrary:
    """A loaded C-simulation library holding one or more designs.

    Parameters
    ----------
    build : BuildResult
        The compiled library.
    designs : sequence of HlsDesign
        The designs it holds (their ``<top>_csim`` entries).

    Attributes
    ----------
    path : pathlib.Path
        The shared library.
    cached : bool
        Whether it came from the cache.
    build_seconds : float
        Time taken to obtain it (compile included when not cached).
    """

    def __init__(self, build: BuildResult, designs: Sequence[HlsDesign]) -> None:
        self.path = build.path
        self.cached = build.cached
        self.build_seconds = build.seconds
        self._dll = ctypes.CDLL(str(build.path))
        self._designs = {(type(d.config), d.config.digest): d for d in designs}
        self._entries = {}
        for design in designs:
            entry = getattr(self._dll, design.csim_symbol)
            entry.argtypes = _ARGTYPES
            entry.restype = ctypes.c_int
            self._entries[design.top] = entry

    @property
    def designs(self) -> list[HlsDesign]:
        """The designs in the library."""
        return list(self._designs.values())

    def design(self, cfg: Any) -> HlsDesign:
        """The design of ``cfg``; ``KeyError`` if the library does not hold it."""
        try:
            return self._designs[(type(cfg), cfg.digest)]
        except KeyError:
            raise KeyError(f"{cfg.short_name} is not in the C-sim library {self.path}") from None

    def run(
        self,
        cfg: Any,
        inputs: Mapping[str, np.ndarray],
        scalars: Mapping[str, int],
        capacity: Mapping[str, int],
    ) -> dict[str, OutputBeats]:
        """Run the kernel of ``cfg`` once on stream data.

        Parameters
        ----------
        cfg : EngineConfig
            A config held by this library.
        inputs : mapping of str to array of uint8
            Bytes of every input stream, shape ``(beats, beat_bytes)`` (or flat).
        scalars : mapping of str to int
            Every run-time argument.
        capacity : mapping of str to int
            Beats expected on every output stream; more is an error.

        Returns
        -------
        dict of str to OutputBeats
            The beats of every output stream.

        Raises
        ------
        ValueError
            A missing or out-of-range argument, or input bytes that are not whole beats.
        CsimError
            An input stream was not read exactly to its end, or an output produced more beats
            than ``capacity``.
        """
        design = self.design(cfg)
        interface: KernelInterface = design.interface
        keep_alive: list[np.ndarray] = []
        in_ptrs, in_beats = [], []
        for port in interface.inputs:
            if port.name not in inputs:
                raise ValueError(f"input stream {port.name!r} is missing")
            data = np.ascontiguousarray(inputs[port.name], dtype=np.uint8).reshape(-1)
            if data.size % port.beat_bytes:
                raise ValueError(
                    f"input {port.name!r}: {data.size} bytes are not whole "
                    f"{port.beat_bytes}-byte beats"
                )
            keep_alive.append(data)
            in_ptrs.append(data.ctypes.data)
            in_beats.append(data.size // port.beat_bytes)
        args_scalar = []
        for scalar in interface.scalars:
            if scalar.name not in scalars:
                raise ValueError(f"run-time argument {scalar.name!r} is missing")
            value = int(scalars[scalar.name])
            lo, hi = scalar.range
            if not lo <= value <= hi:
                raise ValueError(f"{scalar.name}={value} is outside its range [{lo}, {hi}]")
            args_scalar.append(value)
        outs = []
        for port in interface.outputs:
            cap = int(capacity.get(port.name, 0))
            if cap < 0:
                raise ValueError(f"capacity of {port.name!r} must be >= 0")
            buffers = (
                np.zeros((max(cap, 1), port.lanes), dtype=np.int32),
                np.zeros((max(cap, 1), port.lanes), dtype=np.uint8),
                np.zeros(max(cap, 1), dtype=np.uint8),
            )
            keep_alive.extend(buffers)
            outs.append((port, cap, buffers))
        in_ptr_array = (ctypes.c_void_p * max(len(in_ptrs), 1))(*in_ptrs)
        in_beat_array = (ctypes.c_uint64 * max(len(in_beats), 1))(*in_beats)
        # values, valid and last pointers of every output stream
        out_ptrs = [
            (ctypes.c_void_p * len(outs))(*[buffers[i].ctypes.data for _, _, buffers in outs])
            for i in range(3)
        ]
        cap_array = (ctypes.c_uint64 * len(outs))(*[cap for _, cap, _ in outs])
        produced = (ctypes.c_uint64 * len(outs))()
        scalar_array = (ctypes.c_int64 * max(len(args_scalar), 1))(*args_scalar)
        message = ctypes.create_string_buffer(MESSAGE_BYTES)
        status = self._entries[design.top](
            in_ptr_array,
            in_beat_array,
            out_ptrs[0],
            out_ptrs[1],
            out_ptrs[2],
            cap_array,
            produced,
            scalar_array,
            message,
            MESSAGE_BYTES,
        )
        if status != 0:
            raise CsimError(f"{design.top}: {message.value.decode(errors='replace')}")
        result = {}
        for index, (port, _cap, (vals, valid, last)) in enumerate(outs):
            count = int(produced[index])
            result[port.name] = OutputBeats(
                vals[:count].astype(np.int64), valid[:count].astype(bool), last[:count].astype(bool)
            )
        return result


_LIBRARIES: dict[tuple[type, str], CsimLibrary] = {}
_LIBRARIES_LOCK = threading.Lock()


def build_csim(
    configs: Any | Sequence[Any], *, cache_dir: str | os.PathLike[str] | None = None
) -> CsimLibrary:
    """Compile (or fetch from the cache) one C-sim library for one or more engine configs.

    All configs go into a single translation unit, so the ap_types headers are compiled once:
    building 30 GEMM variants together costs a fraction of 30 builds. Every config in the library
    is remembered for this process, so later :func:`csim_gemm` calls on them reuse it.

    Parameters
    ----------
    configs : EngineConfig or sequence of EngineConfig
        Configs of registered engines (duplicates are merged).
    cache_dir : path, optional
        Cache directory; default :func:`default_cache_dir`.

    Returns
    -------
    CsimLibrary
    """
    if not isinstance(configs, Sequence):
        configs = [configs]
    unique: dict[tuple[type, str], Any] = {}
    for cfg in configs:
        unique.setdefault((type(cfg), cfg.digest), cfg)
    if not unique:
        raise ValueError("build_csim needs at least one config")
    designs = [hls_design(cfg) for cfg in unique.values()]
    files, main = render_csim_bundle(designs)
    name = f"csim_{designs[0].top}" if len(designs) == 1 else f"csim_bundle{len(designs)}"
    build = compile_cpp(files, [main], name=name, cache_dir=cache_dir)
    library = CsimLibrary(build, designs)
    with _LIBRARIES_LOCK:
        for key in unique:
            _LIBRARIES[key] = library
    return library


def csim_library(cfg: Any) -> CsimLibrary:
    """The C-sim library of ``cfg`` in this process: one built earlier, else a new one."""
    with _LIBRARIES_LOCK:
        library = _LIBRARIES.get((type(cfg), cfg.digest))
    return library if library is not None else build_csim(cfg)


def csim_gemm(
    cfg: GemmConfig,
    a: np.ndarray,
    b: np.ndarray,
    requant: Requant | None = None,
    *,
    library: CsimLibrary | None = None,
) -> np.ndarray:
    """C-simulate the HLS GEMM kernel of ``cfg``: the same result as ``models.gemm.gemm``.

    The operands go through the kernel's AXI4-Streams exactly as the RTL receives them
    (tile order, packed into ``a_beat_bytes`` / ``b_beat_bytes`` beats), and the C stream's
    ``keep`` / ``last`` side channels are checked against the engine's protocol.

    Parameters
    ----------
    cfg : GemmConfig
        Engine configuration.
    a : ndarray of int, shape (M, K)
        int8-valued left operand.
    b : ndarray of int, shape (K, N)
        int8-valued right operand.
    requant : Requant, optional
        Requantization parameters; ``None`` returns the raw accumulators.
    library : CsimLibrary, optional
        A library holding ``cfg`` (from :func:`build_csim`); default :func:`csim_library`.

    Returns
    -------
    ndarray of int64, shape (M, N)

    Raises
    ------
    ValueError
        Operands that do not fit the engine.
    CsimError
        A build failure, a missing g++ or ap_types, or the kernel broke the stream protocol.
    """
    if not isinstance(cfg, GemmConfig):
        raise ValueError(f"cfg must be a GemmConfig, got {type(cfg).__name__}")
    inputs, scalars = gemm_stream_inputs(cfg, a, b, requant)
    m, n = scalars["m"], scalars["n"]
    beats = gemm_tiles(m, n, cfg)[1] * m
    lib = library if library is not None else csim_library(cfg)
    outputs = lib.run(cfg, inputs, scalars, {"c": beats})
    try:
        return gemm_from_beats(cfg, m, n, outputs["c"])
    except ValueError as exc:
        raise CsimError(f"{cfg.short_name}: C stream protocol: {exc}") from None
