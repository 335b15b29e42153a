"""``LinearUnit``: a ``TemporalGemm`` in raw-accumulator mode feeding an ``Epilogue``.

The fused compute unit of a quantized linear layer: ``y = post(requant(A @ B + bias))`` with
per-output-channel requantization and, by configuration, GELU and a residual add::

    a, b --> TemporalGemm (int32 tiles) --c--> Epilogue --> y
    csr  --> GEMM registers                  ^  ^
                                   params ---+  +--- residual

The GEMM's ``c`` stream (tile order, ``cols`` 32-bit lanes, ``tkeep``, ``tlast``) is exactly the
Epilogue's ``x`` input, so the two are joined without a buffer; a stalled ``y`` stalls the
epilogue, then the GEMM's drain bank, then its array. The GEMM always runs in raw mode: writes to
its ``MODE`` register have bit 0 forced to 1. Per run the host writes M, N, K, sends the
epilogue's parameter packet (with the same M) and starts the GEMM.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from amaranth import Module, Mux
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from tessera.models.epilogue import PARAM_BEAT_BYTES, EpilogueConfig
from tessera.models.gemm import GemmConfig
from tessera.rtl.axi import AxiLiteSignature, AxiStreamSignature
from tessera.rtl.emit import emit
from tessera.rtl.epilogue import Epilogue, latency, stream_layout
from tessera.rtl.temporal_gemm import CSR_ADDR_WIDTH, REGISTERS, TemporalGemm, register_map

__all__ = ["TOP_NAME", "LinearConfigs", "LinearUnit", "check_pair", "generate_linear"]

TOP_NAME = "linear_unit"
_MODE_WORD = next(r.offset for r in REGISTERS if r.name == "MODE") >> 2


def check_pair(gemm: GemmConfig, epi: EpilogueConfig) -> None:
    """Raise ``ValueError`` unless ``epi`` consumes the C stream of ``gemm`` as it comes."""
    if not isinstance(gemm, GemmConfig) or not isinstance(epi, EpilogueConfig):
        raise ValueError("a LinearUnit takes a GemmConfig and an EpilogueConfig")
    for name in ("rows", "cols", "acc_bits"):
        if getattr(gemm, name) != getattr(epi, name):
            raise ValueError(
                f"epilogue {name}={getattr(epi, name)} must equal the GEMM's {name}="
                f"{getattr(gemm, name)}: build it with dataclasses.replace(epi, {name}="
                f"{getattr(gemm, name)})"
            )
    if epi.dim_bits < gemm.dim_bits:
        raise ValueError(
            f"epilogue dim_bits={epi.dim_bits} must be at least the GEMM's {gemm.dim_bits}, so "
            "every M the GEMM runs fits the parameter packet"
        )


@dataclass(frozen=True)
class LinearConfigs:
    """The two configurations of a :class:`LinearUnit`, named as one design.

    Attributes
    ----------
    gemm : GemmConfig
    epi : EpilogueConfig
    """

    gemm: GemmConfig
    epi: EpilogueConfig

    def __post_init__(self) -> None:
        check_pair(self.gemm, self.epi)

    def to_dict(self) -> dict[str, Any]:
        """``{"gemm": ..., "epi": ...}`` in plain JSON."""
        return {"gemm": self.gemm.to_dict(), "epi": self.epi.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LinearConfigs:
        """Inverse of :meth:`to_dict`."""
        return cls(GemmConfig.from_dict(data["gemm"]), EpilogueConfig.from_dict(data["epi"]))

    @property
    def short_name(self) -> str:
        """Readable, unique name such as ``linear_r4c4_b1q1g0r1_<gemm digest><epi digest>``."""
        e = self.epi
        flags = f"b{int(e.bias)}q{int(e.requant)}g{int(e.gelu is not None)}r{int(e.residual)}"
        return (
            f"linear_r{self.gemm.rows}c{self.gemm.cols}_{flags}_"
            f"{self.gemm.digest[:5]}{self.epi.digest[:5]}"
        )


class LinearUnit(wiring.Component):
    """GEMM + epilogue: a quantized linear layer with fused bias, per-channel requantization,
    GELU and residual add.

    Parameters
    ----------
    gemm : GemmConfig
        The MAC array, accumulator width and size registers.
    epi : EpilogueConfig
        The post-ops; its ``rows``, ``cols`` and ``acc_bits`` must be the GEMM's (see
        :meth:`EpilogueConfig.for_gemm`).

    Attributes
    ----------
    a : In(AxiStreamSignature(a_beat_bytes * 8))
        A operand bytes (``tdata``, ``tvalid`` in; ``tready`` out), as ``TemporalGemm``'s.
    b : In(AxiStreamSignature(b_beat_bytes * 8))
        B operand bytes, as ``TemporalGemm``'s.
    params : In(AxiStreamSignature(96, last=True))
        The epilogue's parameter packets (``tdata``, ``tlast``, ``tvalid`` in; ``tready`` out).
    residual : In(AxiStreamSignature(cols * out_lane_bytes * 8))
        Only with ``epi.residual``: residual beats in the output's layout.
    y : Out(AxiStreamSignature(cols * out_lane_bytes * 8, keep=True, last=True))
        Results in the GEMM's tile order (``tdata``, ``tkeep``, ``tlast``, ``tvalid`` out;
        ``tready`` in).
    csr : In(AxiLiteSignature(6))
        The GEMM's registers (:data:`tessera.rtl.temporal_gemm.REGISTERS`); ``MODE`` bit 0 reads
        back as 1.
    error : Out(1)
        The epilogue's sticky protocol error.
    """

    def __init__(self, gemm: GemmConfig, epi: EpilogueConfig) -> None:
        check_pair(gemm, epi)
        self.gemm_config = gemm
        self.epi_config = epi
        self._gemm = TemporalGemm(gemm)
        self._epi = Epilogue(epi)
        members: dict[str, Any] = {
            "a": In(AxiStreamSignature(gemm.a_beat_bytes * 8)),
            "b": In(AxiStreamSignature(gemm.b_beat_bytes * 8)),
            "params": In(AxiStreamSignature(PARAM_BEAT_BYTES * 8, last=True)),
        }
        out_width = epi.cols * epi.out_lane_bytes * 8
        if epi.residual:
            members["residual"] = In(AxiStreamSignature(out_width))
        members["y"] = Out(AxiStreamSignature(out_width, keep=True, last=True))
        members["csr"] = In(AxiLiteSignature(CSR_ADDR_WIDTH))
        members["error"] = Out(1)
        super().__init__(members)

    def elaborate(self, platform: object) -> Module:
        m = Module()
        m.submodules.gemm = gemm = self._gemm
        m.submodules.epilogue = epi = self._epi
        wiring.connect(m, wiring.flipped(self.a), gemm.a)
        wiring.connect(m, wiring.flipped(self.b), gemm.b)
        wiring.connect(m, gemm.c, epi.x)
        wiring.connect(m, wiring.flipped(self.params), epi.params)
        if self.epi_config.residual:
            wiring.connect(m, wiring.flipped(self.residual), epi.residual)
        wiring.connect(m, epi.y, wiring.flipped(self.y))
        m.d.comb += self.error.eq(epi.error)

        # The register bus passes through, except that MODE writes always select raw output.
        for name, member in AxiLiteSignature(CSR_ADDR_WIDTH).members.items():
            outer, inner = getattr(self.csr, name), getattr(gemm.csr, name)
            if member.flow is Out:
                m.d.comb += inner.eq(outer)
            else:
                m.d.comb += outer.eq(inner)
        is_mode = self.csr.awaddr[2:] == _MODE_WORD
        m.d.comb += gemm.csr.wdata.eq(Mux(is_mode, self.csr.wdata | 1, self.csr.wdata))
        return m


def linear_register_map(gemm: GemmConfig, epi: EpilogueConfig) -> dict[str, Any]:
    """The unit's host interface: the GEMM's registers and A/B streams, the epilogue's streams."""
    gemm_map = register_map(gemm)
    layout = stream_layout(epi)
    streams = {"a": gemm_map["streams"]["a"], "b": gemm_map["streams"]["b"]}
    streams.update({k: v for k, v in layout["streams"].items() if k != "x"})
    return {
        "top": TOP_NAME,
        "config": LinearConfigs(gemm, epi).to_dict(),
        "csr": gemm_map["csr"],
        "streams": streams,
        "notes": "MODE bit 0 is forced to 1 (raw accumulators feed the epilogue)",
    }


def generate_linear(
    gemm: GemmConfig, epi: EpilogueConfig, out_dir: str | Path | None = None
) -> dict[str, Any]:
    """Generate the Verilog of a ``LinearUnit`` and its register map.

    Parameters
    ----------
    gemm, epi : GemmConfig, EpilogueConfig
        The unit's configurations.
    out_dir : path, optional
        If given, write ``linear_unit.v``, ``register_map.json`` and ``config.json`` there.

    Returns
    -------
    dict
        ``{"verilog": str, "top": "linear_unit", "files": list[str], "register_map": dict,
        "epilogue_latency": int}``.
    """
    return emit(
        LinearUnit(gemm, epi),
        TOP_NAME,
        LinearConfigs(gemm, epi),
        out_dir,
        {"register_map": linear_register_map(gemm, epi)},
        epilogue_latency=latency(epi),
    )
