"""hls4ml for MLPs: convert a torch MLP with tessera's precisions, C-simulate it, cache the build.

:func:`convert_mlp` drives hls4ml 1.3.0 (``config_from_pytorch_model`` with ``granularity="name"``,
the Vitis backend, ``io_parallel``) with every layer's precision set from one
:class:`~tessera.models.mlp.MlpPrecision`, writes the project and compiles its C-simulation library
(``.compile()``: one g++ run, seconds). The project directory is named by a hash of the weights, the
precision, the part, the clock and the hls4ml version, so converting the same MLP again reuses the
library instead of compiling it. :func:`predict_mlp` runs that library; its outputs match
:func:`tessera.models.mlp.golden_mlp` bit for bit.

Environment variable: ``TESSERA_CACHE_DIR`` (cache root; projects go to its ``hls4ml/``, default
``~/.cache/tessera/hls4ml``).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import importlib.metadata
import io
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from tessera.hls.generate import DEFAULT_CLOCK_MHZ, DEFAULT_PART
from tessera.models.mlp import MlpLayer, MlpPrecision, mlp_from_torch

if TYPE_CHECKING:
    import torch

__all__ = [
    "HLS4ML_FIX",
    "HLS4ML_VERSION",
    "Hls4mlError",
    "Hls4mlMlp",
    "convert_mlp",
    "default_hls4ml_dir",
    "hls4ml_config",
    "predict_mlp",
]

#: The hls4ml release whose behaviour the golden model reproduces.
HLS4ML_VERSION = "1.3.0"
HLS4ML_FIX = f"pip install hls4ml=={HLS4ML_VERSION}"
PROJECT_NAME = "myproject"
_MARKER = "tessera_build.json"


class Hls4mlError(RuntimeError):
    """hls4ml is missing, or converting or compiling a model with it failed.

    Attributes
    ----------
    fix : str or None
        How to install what is missing, if that is the cause.
    """

    def __init__(self, message: str, *, fix: str | None = None) -> None:
        super().__init__(f"{message}; fix: {fix}" if fix else message)
        self.fix = fix


def _import_hls4ml() -> Any:
    try:
        import hls4ml
    except ImportError as err:
        raise Hls4mlError(f"hls4ml is not installed ({err})", fix=HLS4ML_FIX) from None
    return hls4ml


def _hls4ml_version() -> str:
    try:
        return importlib.metadata.version("hls4ml")
    except importlib.metadata.PackageNotFoundError:
        raise Hls4mlError("hls4ml is not installed", fix=HLS4ML_FIX) from None


def default_hls4ml_dir() -> Path:
    """``$TESSERA_CACHE_DIR/hls4ml`` when that variable is set, else ``~/.cache/tessera/hls4ml``."""
    root = os.environ.get("TESSERA_CACHE_DIR")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "tessera"
    return base / "hls4ml"


@dataclass(eq=False)
class Hls4mlMlp:
    """A compiled hls4ml MLP project and its C-simulation library.

    Attributes
    ----------
    project_dir : pathlib.Path
        The hls4ml project (``firmware/``, ``build_prj.tcl``, ...), usable with Vitis HLS.
    library : pathlib.Path
        The C-simulation shared library hls4ml compiled.
    precision : MlpPrecision
        The formats it was built with.
    n_in, n_out : int
        Input and output widths.
    reused : bool
        True when the library came from an earlier conversion of the same MLP (no compile).
    compile_seconds : float
        Time of hls4ml's ``.compile()`` (0 when reused).
    graph : hls4ml ModelGraph or None
        hls4ml's model when it was converted now; None when reused.
    """

    project_dir: Path
    library: Path
    precision: MlpPrecision
    n_in: int
    n_out: int
    reused: bool
    compile_seconds: float
    graph: Any = None
    _entry: Any = field(default=None, repr=False)

    def entry(self) -> Any:
        """The library's ``<project>_double(double *in, double *out)`` function (loaded once)."""
        if self._entry is None:
            function = ctypes.CDLL(str(self.library))[f"{PROJECT_NAME}_double"]
            function.restype = None
            function.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
            self._entry = function
        return self._entry


def hls4ml_config(
    model: torch.nn.Module, precision: MlpPrecision, n_in: int, n_layers: int
) -> dict[str, Any]:
    """hls4ml configuration of an MLP with every precision set from ``precision``.

    Starts from ``hls4ml.utils.config_from_pytorch_model(..., granularity="name",
    backend="Vitis")`` and replaces every ``'auto'`` precision: the input layer's result is
    ``input``; each Dense gets ``weight``, ``bias``, ``accum`` and ``result``; each ReLU's result
    is ``result``. The strategy is ``Latency`` with reuse factor 1 (fully parallel).

    Parameters
    ----------
    model : torch.nn.Module
        The MLP.
    precision : MlpPrecision
        Formats.
    n_in : int
        Input width.
    n_layers : int
        Number of Linear layers (checked against hls4ml's layer list).

    Returns
    -------
    dict
        The configuration for ``convert_from_pytorch_model``.

    Raises
    ------
    Hls4mlError
        If hls4ml is missing or its configuration has an unexpected layout.
    """
    hls4ml = _import_hls4ml()
    with contextlib.redirect_stdout(io.StringIO()):
        config = hls4ml.utils.config_from_pytorch_model(
            model, input_shape=(n_in,), granularity="name", backend="Vitis"
        )
    config["Model"].update(
        {"Precision": {"default": str(precision.result)}, "Strategy": "Latency", "ReuseFactor": 1}
    )
    inputs, denses = [], []
    for name, layer in config["LayerName"].items():
        types = layer["Precision"]
        if "weight" in types:  # Dense
            denses.append(name)
            types.update(
                weight=str(precision.weight),
                bias=str(precision.bias),
                accum=str(precision.accum),
                result=str(precision.result),
            )
        elif "ReuseFactor" not in layer:  # the input layer has only a result type
            inputs.append(name)
            types["result"] = str(precision.input)
        else:  # ReLU
            types["result"] = str(precision.result)
    if len(inputs) != 1 or len(denses) != n_layers:
        raise Hls4mlError(
            f"unexpected hls4ml {_hls4ml_version()} configuration: inputs {inputs}, dense "
            f"layers {denses} for {n_layers} Linear layers (tessera expects hls4ml "
            f"{HLS4ML_VERSION})"
        )
    return config


def _cache_key(layers: list[MlpLayer], precision: MlpPrecision, part: str, clock_mhz: float) -> str:
    digest = hashlib.sha256()
    meta = {
        "hls4ml": _hls4ml_version(),
        "precision": precision.to_dict(),
        "part": part,
        "clock_mhz": clock_mhz,
        "layers": [
            [layer.weight.shape, str(layer.weight.dtype), layer.activation, layer.bias is None]
            for layer in layers
        ],
    }
    digest.update(json.dumps(meta, sort_keys=True).encode())
    for layer in layers:
        digest.update(np.ascontiguousarray(layer.weight).tobytes())
        digest.update(np.ascontiguousarray(layer.bias_or_zeros).tobytes())
    return digest.hexdigest()[:12]


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def convert_mlp(
    model: torch.nn.Module,
    precision: MlpPrecision,
    out_dir: str | Path | None = None,
    *,
    part: str = DEFAULT_PART,
    clock_mhz: float = DEFAULT_CLOCK_MHZ,
    reuse: bool = True,
) -> Hls4mlMlp:
    """Convert a torch MLP with hls4ml (Vitis backend, io_parallel) and compile its C-simulation.

    The project goes to ``out_dir / <precision.short_name>_<hash>``, the hash covering weights,
    precision, part, clock and hls4ml version. When that project was already compiled (and
    ``reuse``), its library is used as is: hls4ml itself cannot reload a PyTorch project
    (``link_existing_project`` fails on the tuple in its ``hls4ml_config.yml``), so tessera keeps
    a small marker beside it. The library bakes in the absolute path of its weight files, so the
    project is built in place under a file lock rather than moved into the cache.

    Parameters
    ----------
    model : torch.nn.Module
        ``nn.Sequential`` of ``nn.Linear`` / ``nn.ReLU`` (see
        :func:`tessera.models.mlp.mlp_from_torch`), float32.
    precision : MlpPrecision
        Formats of every layer.
    out_dir : str or pathlib.Path or None, default None
        Root of the project directories; default :func:`default_hls4ml_dir`.
    part : str, default DEFAULT_PART
        FPGA part written into the Vitis HLS project.
    clock_mhz : float, default DEFAULT_CLOCK_MHZ
        Clock target; the project's clock period is ``1000 / clock_mhz`` ns.
    reuse : bool, default True
        Reuse an earlier compile of the same MLP; False always converts and compiles anew.

    Returns
    -------
    Hls4mlMlp
        The project and its library.

    Raises
    ------
    ValueError
        If the model is not such an MLP, ``precision`` is not an MlpPrecision or ``clock_mhz`` is
        not positive.
    Hls4mlError
        If hls4ml is missing (the message names ``pip install hls4ml==1.3.0``) or fails.
    """
    if not isinstance(precision, MlpPrecision):
        raise ValueError(f"precision must be an MlpPrecision, got {type(precision).__name__}")
    if not isinstance(clock_mhz, int | float) or not 0 < clock_mhz < 10_000:
        raise ValueError(f"clock_mhz must be a number in (0, 10000), got {clock_mhz!r}")
    layers = mlp_from_torch(model)
    hls4ml = _import_hls4ml()
    root = Path(out_dir) if out_dir is not None else default_hls4ml_dir()
    name = f"{precision.short_name}_{_cache_key(layers, precision, part, float(clock_mhz))}"
    project = (root / name).resolve()
    n_in, n_out = layers[0].in_features, layers[-1].out_features
    with _file_lock(root / f".{name}.lock"):
        marker = project / _MARKER
        if reuse and marker.is_file():
            built = json.loads(marker.read_text())
            library = project / built["library"]
            if library.is_file():
                return Hls4mlMlp(project, library, precision, n_in, n_out, True, 0.0)
        shutil.rmtree(project, ignore_errors=True)
        config = hls4ml_config(model, precision, n_in, len(layers))
        try:
            with contextlib.redirect_stdout(io.StringIO()) as log:
                graph = hls4ml.converters.convert_from_pytorch_model(
                    model,
                    hls_config=config,
                    output_dir=str(project),
                    project_name=PROJECT_NAME,
                    backend="Vitis",
                    io_type="io_parallel",
                    part=part,
                    clock_period=1000.0 / clock_mhz,
                )
                start = time.perf_counter()
                graph.compile()
                seconds = time.perf_counter() - start
        except Exception as err:
            raise Hls4mlError(
                f"hls4ml failed to convert or compile the MLP in {project}: {err}\n"
                f"{log.getvalue()[-2000:]}"
            ) from err
        stamp = graph.config.get_config_value("Stamp")
        library = project / "firmware" / f"{PROJECT_NAME}-{stamp}.so"
        if not library.is_file():
            raise Hls4mlError(f"hls4ml reported success but {library} is missing")
        marker.write_text(
            json.dumps(
                {
                    "library": str(library.relative_to(project)),
                    "precision": precision.to_dict(),
                    "n_in": n_in,
                    "n_out": n_out,
                    "hls4ml": _hls4ml_version(),
                    "compile_seconds": seconds,
                },
                indent=2,
            )
        )
        return Hls4mlMlp(project, library, precision, n_in, n_out, False, seconds, graph)


def predict_mlp(hls_model: Hls4mlMlp, x: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Run hls4ml's C-simulation of the MLP on ``x``.

    Calls the library's ``myproject_double`` entry (the one hls4ml's own ``predict`` uses for
    float64 input) once per row. Inputs are passed as float64, so float32 inputs arrive unchanged
    and outputs (``result`` values, at most 32 bits) come back exactly.

    Parameters
    ----------
    hls_model : Hls4mlMlp
        From :func:`convert_mlp`.
    x : array_like of float
        Shape ``(n_in,)`` or ``(batch, n_in)``; finite.

    Returns
    -------
    numpy.ndarray of float64
        Shape ``(n_out,)`` or ``(batch, n_out)``.

    Raises
    ------
    ValueError
        If ``hls_model`` is not an Hls4mlMlp or ``x`` has the wrong shape or non-finite values.
    """
    if not isinstance(hls_model, Hls4mlMlp):
        raise ValueError(f"hls_model must be an Hls4mlMlp from convert_mlp, got {hls_model!r}")
    arr = np.asarray(x)
    if arr.dtype.kind not in "fiu" or arr.ndim not in (1, 2) or arr.shape[-1] != hls_model.n_in:
        raise ValueError(
            f"x must be real with shape ({hls_model.n_in},) or (batch, {hls_model.n_in}), got "
            f"dtype {arr.dtype} shape {arr.shape}"
        )
    rows = np.ascontiguousarray(np.atleast_2d(arr), dtype=np.float64)
    if not np.all(np.isfinite(rows)):
        raise ValueError("x must be finite (no NaN or infinity)")
    out = np.zeros((rows.shape[0], hls_model.n_out), dtype=np.float64)
    entry = hls_model.entry()
    for row, result in zip(rows, out, strict=True):
        entry(row.ctypes.data, result.ctypes.data)
    return out if arr.ndim == 2 else out[0]
