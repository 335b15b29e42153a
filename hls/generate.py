"""Write the Vitis HLS project of an engine config: config header, top, testbench, tcl, Makefile.

Python only fills Jinja2 templates (``templates/*.j2``) with the engine's
:class:`~tessera.hls.engine.KernelInterface`; the kernels themselves are the hand-written headers
in ``include/tessera/``, copied next to the generated sources. Everything is rendered in memory
before anything is written, so an error leaves no half-written project.

tessera does not run Vitis HLS: the project's ``run_hls.tcl`` / ``Makefile`` are for a machine
that has it. What tessera checks is the same C++ under g++ (:mod:`tessera.hls.csim`) and the
testbench compiled with g++.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import numpy as np

from tessera.hls.engine import (
    HlsEngine,
    KernelInterface,
    StreamCase,
    c_identifier,
    check_identifier,
    engine_for,
)

__all__ = [
    "DEFAULT_CLOCK_MHZ",
    "DEFAULT_PART",
    "STEPS",
    "HlsDesign",
    "generate_hls",
    "hls_design",
    "kernel_header_text",
    "render_csim_bundle",
    "render_hls",
    "render_kernel_sources",
]

#: Default FPGA part: the ZCU102 board's Zynq UltraScale+ MPSoC.
DEFAULT_PART = "xczu9eg-ffvb1156-2-e"
#: Default clock target in MHz.
DEFAULT_CLOCK_MHZ = 300.0
#: The Vitis HLS steps run_hls.tcl knows, in flow order.
STEPS: tuple[str, ...] = ("csim", "synth", "cosim", "export")

#: Headers every design gets besides its kernel's: the host-side stream helpers that the C-sim
#: entry and the testbench use.
HOST_HEADERS: tuple[str, ...] = ("axis.h", "stream_io.h")

_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z")


@dataclass(frozen=True)
class HlsDesign:
    """One engine config bound to its HLS names: what every template renders from.

    Attributes
    ----------
    config : EngineConfig
        The engine configuration.
    engine : HlsEngine
        Its registry entry.
    interface : KernelInterface
        ``engine.interface(config)``.
    top : str
        Top function name (a checked identifier); also names the files.
    """

    config: Any
    engine: HlsEngine
    interface: KernelInterface
    top: str

    @property
    def config_name(self) -> str:
        """Name of the generated ``CONFIG_T`` struct."""
        return f"{self.top}_config"

    @property
    def csim_symbol(self) -> str:
        """Name of the ``extern "C"`` C-simulation entry."""
        return f"{self.top}_csim"

    def context(self) -> dict[str, Any]:
        """Template variables shared by all templates."""
        return {
            "top": self.top,
            "config_name": self.config_name,
            "config_type": type(self.config).__name__,
            "config_digest": self.config.digest,
            "config_items": [
                (key, json.dumps(value)) for key, value in self.config.to_dict().items()
            ],
            "guard": f"{self.top.upper()}_CONFIG_H_",
            "interface": self.interface,
        }


def hls_design(cfg: Any, top: str | None = None) -> HlsDesign:
    """Bind ``cfg`` to its engine and names.

    Parameters
    ----------
    cfg : EngineConfig
        A config of a registered engine (``GemmConfig``...).
    top : str, optional
        Top function name; sanitised to ``[A-Za-z_][A-Za-z0-9_]*``. Defaults to
        ``cfg.short_name`` (unique per config, so several designs can share one C-sim library).

    Raises
    ------
    ValueError
        If no engine takes ``cfg`` or ``top`` holds no usable character.
    """
    engine = engine_for(cfg)
    name = c_identifier(cfg.short_name if top is None else top)
    return HlsDesign(cfg, engine, engine.interface(cfg), name)


def _markdown_cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


@cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(resources.files("tessera.hls") / "templates")),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    # Every identifier a template writes from data goes through this check.
    env.filters["ident"] = check_identifier
    env.filters["md"] = _markdown_cell
    return env


def _render(template: str, **context: Any) -> str:
    return _environment().get_template(template).render(**context)


def kernel_header_text(name: str) -> str:
    """Text of a kernel header of ``include/tessera/`` (e.g. ``"gemm.h"``)."""
    return (resources.files("tessera.hls") / "include" / "tessera" / name).read_text()


def render_kernel_sources(design: HlsDesign, csim_name: str = "csim.cpp") -> dict[str, str]:
    """The C++ sources of one design: config header, top function, C-sim entry, kernel headers.

    Returns
    -------
    dict of str to str
        Relative path -> text: ``<top>_config.h``, ``<top>.cpp``, ``csim_name`` and
        ``include/tessera/<header>`` for every header the kernel needs.
    """
    context = design.context()
    files = {
        f"{design.top}_config.h": _render("config.h.j2", **context),
        f"{design.top}.cpp": _render("top.cpp.j2", **context),
        csim_name: _render("csim.cpp.j2", **context),
    }
    for header in dict.fromkeys((*design.interface.headers, *HOST_HEADERS)):
        files[f"include/tessera/{header}"] = kernel_header_text(header)
    return files


def render_csim_bundle(designs: Sequence[HlsDesign]) -> tuple[dict[str, str], str]:
    """Sources of one C-sim translation unit holding several designs (distinct tops).

    Returns
    -------
    files : dict of str to str
        Relative path -> text, including ``csim_bundle.cpp``.
    main : str
        The file to compile (``"csim_bundle.cpp"``).
    """
    tops = [d.top for d in designs]
    if len(set(tops)) != len(tops):
        raise ValueError(f"designs in one C-sim library need distinct tops, got {tops}")
    files: dict[str, str] = {}
    for design in designs:
        files.update(render_kernel_sources(design, f"{design.top}_csim.cpp"))
    files["csim_bundle.cpp"] = _render(
        "csim_bundle.cpp.j2",
        tops=tops,
        ap_int_max_w=max(d.interface.ap_int_max_w for d in designs),
    )
    return files, "csim_bundle.cpp"


def _check_options(part: str, clock_mhz: float, steps: Sequence[str]) -> tuple[str, ...]:
    if not isinstance(part, str) or not _PART.match(part):
        raise ValueError(
            f"part must look like {DEFAULT_PART!r} (letters, digits, - _ .), got {part!r}"
        )
    if isinstance(clock_mhz, bool) or not isinstance(clock_mhz, int | float):
        raise ValueError(f"clock_mhz must be a number, got {clock_mhz!r}")
    if not (math.isfinite(clock_mhz) and 0 < clock_mhz <= 1000):
        raise ValueError(f"clock_mhz must be in (0, 1000] MHz, got {clock_mhz}")
    if isinstance(steps, str):
        steps = [steps]
    unknown = [s for s in steps if s not in STEPS]
    if unknown or not steps:
        raise ValueError(f"steps must be a non-empty subset of {list(STEPS)}, got {list(steps)}")
    return tuple(s for s in STEPS if s in steps)


def _tb_data(interface: KernelInterface, cases: Sequence[StreamCase]) -> dict[str, str]:
    """The testbench's vector files (decimal integers; format in the tb.cpp header)."""
    inputs: list[str] = [str(len(cases))]
    expected: list[str] = [str(len(cases))]
    names: list[str] = []
    for case in cases:
        if "\n" in case.name or "\r" in case.name:
            raise ValueError(f"case name {case.name!r} must be one line")
        names.append(case.name)
        missing = [s.name for s in interface.scalars if s.name not in case.scalars]
        if missing:
            raise ValueError(f"case {case.name!r} lacks run-time arguments {missing}")
        for scalar in interface.scalars:
            lo, hi = scalar.range
            value = case.scalars[scalar.name]
            if not lo <= value <= hi:
                raise ValueError(
                    f"case {case.name!r}: {scalar.name}={value} is outside [{lo}, {hi}]"
                )
        inputs.append(" ".join(str(int(case.scalars[s.name])) for s in interface.scalars))
        for port in interface.inputs:
            data = np.asarray(case.inputs[port.name], dtype=np.uint8).reshape(-1, port.beat_bytes)
            inputs.append(str(len(data)))
            inputs.extend(" ".join(map(str, row)) for row in data.tolist())
        for port in interface.outputs:
            beats = case.outputs.get(port.name)
            if beats is None:
                raise ValueError(f"case {case.name!r} has no expected output {port.name!r}")
            expected.append(str(len(beats.values)))
            for values, valid, last in zip(
                beats.values.tolist(), beats.valid.tolist(), beats.last.tolist(), strict=True
            ):
                row = [*values, *(int(v) for v in valid), int(last)]
                expected.append(" ".join(map(str, row)))
    return {
        "tb_data/inputs.txt": "\n".join(inputs) + "\n",
        "tb_data/expected.txt": "\n".join(expected) + "\n",
        "tb_data/cases.txt": "".join(f"{name}\n" for name in names),
    }


def render_hls(
    cfg: Any,
    *,
    top: str | None = None,
    part: str = DEFAULT_PART,
    clock_mhz: float = DEFAULT_CLOCK_MHZ,
    steps: Sequence[str] = STEPS,
    cases: Sequence[StreamCase] | None = None,
) -> dict[str, str]:
    """Render every file of the HLS project of ``cfg`` in memory.

    Parameters are those of :func:`generate_hls`.

    Returns
    -------
    dict of str to str
        Relative path -> text.
    """
    steps = _check_options(part, clock_mhz, steps)
    design = hls_design(cfg, top)
    if cases is None:
        cases = design.engine.default_cases(cfg)
    context = design.context()
    context.update(
        part=part,
        clock_mhz=f"{clock_mhz:g}",
        clock_period=f"{1000.0 / clock_mhz:.3f}",
        steps=list(steps),
        project=f"{design.top}_prj",
        cases=list(cases),
        headers=list(dict.fromkeys((*design.interface.headers, *HOST_HEADERS))),
    )
    files = render_kernel_sources(design)
    files["tb.cpp"] = _render("tb.cpp.j2", **context)
    files.update(_tb_data(design.interface, cases))
    files["run_hls.tcl"] = _render("run_hls.tcl.j2", **context)
    files["Makefile"] = _render("Makefile.j2", **context)
    files["README.md"] = _render("README.md.j2", **context)
    files["config.json"] = (
        json.dumps(
            {
                "engine": design.engine.name,
                "top": design.top,
                "config_type": type(cfg).__name__,
                "config": cfg.to_dict(),
                "digest": cfg.digest,
                "part": part,
                "clock_mhz": clock_mhz,
                "clock_period_ns": float(context["clock_period"]),
                "steps": list(steps),
                "streams": [vars(p) for p in design.interface.streams],
                "scalars": [vars(s) for s in design.interface.scalars],
                "testbench_cases": [case.name for case in cases],
            },
            indent=2,
        )
        + "\n"
    )
    return files


def _write_tree(files: Mapping[str, str], out_dir: Path) -> list[Path]:
    """Write ``files`` under ``out_dir``: a new directory appears whole, existing files are
    replaced one by one with atomic renames (other files there, e.g. a Vitis project, stay)."""
    out_dir = out_dir.absolute()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    if not out_dir.exists():
        staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
        try:
            for rel, text in files.items():
                path = staging / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
            os.rename(staging, out_dir)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    else:
        for rel, text in files.items():
            path = out_dir / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
            try:
                with os.fdopen(fd, "w") as handle:
                    handle.write(text)
                os.replace(tmp, path)
            except BaseException:
                os.unlink(tmp)
                raise
    return [out_dir / rel for rel in files]


def generate_hls(
    cfg: Any,
    out_dir: str | os.PathLike[str],
    *,
    top: str | None = None,
    part: str = DEFAULT_PART,
    clock_mhz: float = DEFAULT_CLOCK_MHZ,
    steps: Sequence[str] = STEPS,
    cases: Sequence[StreamCase] | None = None,
) -> dict[str, Any]:
    """Write the Vitis HLS project of an engine config.

    Parameters
    ----------
    cfg : EngineConfig
        Config of a registered engine (``GemmConfig``...).
    out_dir : path
        Project directory; created if needed. Files already there with the same names are
        replaced; others are left alone.
    top : str, optional
        Top function name, sanitised to ``[A-Za-z_][A-Za-z0-9_]*``; default ``cfg.short_name``.
    part : str
        FPGA part for ``set_part``; default the ZCU102's ``xczu9eg-ffvb1156-2-e``.
    clock_mhz : float
        Clock target in MHz (``create_clock -period 1000/clock_mhz``), in (0, 1000].
    steps : sequence of str
        Steps ``run_hls.tcl`` runs without arguments: any of ``csim``, ``synth``, ``cosim``,
        ``export`` (run in that order).
    cases : sequence of StreamCase, optional
        Testbench vectors (e.g. :func:`tessera.hls.gemm.gemm_stream_case`); default a few small
        golden-model cases of the engine.

    Returns
    -------
    dict
        ``{"top", "engine", "out_dir", "files" (list of paths), "part", "clock_mhz",
        "clock_period_ns", "steps"}``.

    Raises
    ------
    ValueError
        Unknown engine, bad part / clock / steps, or cases that do not fit the interface.
        Nothing is written then.
    """
    files = render_hls(cfg, top=top, part=part, clock_mhz=clock_mhz, steps=steps, cases=cases)
    written = _write_tree(files, Path(out_dir))
    info = json.loads(files["config.json"])
    return {
        "top": info["top"],
        "engine": info["engine"],
        "out_dir": str(Path(out_dir).absolute()),
        "files": [str(p) for p in written],
        "part": part,
        "clock_mhz": clock_mhz,
        "clock_period_ns": info["clock_period_ns"],
        "steps": info["steps"],
    }
