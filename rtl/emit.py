"""Write a generated engine: its Verilog, its JSON documents and its config, in one place."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from amaranth.back import verilog
from amaranth.lib import wiring

__all__ = ["emit"]


def emit(
    component: wiring.Component,
    top: str,
    config: Any,
    out_dir: str | Path | None,
    documents: dict[str, Any],
    **extra: Any,
) -> dict[str, Any]:
    """Convert ``component`` to Verilog and, with ``out_dir``, write the engine's files.

    Parameters
    ----------
    component : wiring.Component
        The engine; its clock and reset become the ``clk`` and ``rst`` ports.
    top : str
        Name of the top-level Verilog module (and of the ``.v`` file).
    config : EngineConfig
        The config the engine was built from; written as ``config.json``.
    out_dir : path, optional
        Directory for ``<top>.v``, one ``<name>.json`` per document, and ``config.json``.
    documents : dict
        JSON-able descriptions of the host interface by name (register map, stream layout...).
    **extra
        Further entries of the returned dict only (e.g. latency).

    Returns
    -------
    dict
        ``{"verilog": str, "top": str, "files": list[str], **documents, **extra}``.
    """
    text = verilog.convert(component, name=top, emit_src=False)
    files: list[str] = []
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        outputs = {f"{top}.v": text, "config.json": _json(config.to_dict())}
        outputs.update({f"{name}.json": _json(doc) for name, doc in documents.items()})
        for name, content in outputs.items():
            (out / name).write_text(content)
            files.append(str(out / name))
    return {"verilog": text, "top": top, "files": files, **documents, **extra}


def _json(value: Any) -> str:
    return json.dumps(value, indent=2) + "\n"
