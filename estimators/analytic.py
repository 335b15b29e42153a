"""First-principles resource model of the engines: LUT, FF, DSP and BRAM from the RTL's structure.

Each engine's configuration is turned into an :class:`Inventory` of the hardware its generator
builds (multipliers with their operand widths, register bits, adder / comparator bits, wide
multiplexer inputs, memories with depth and width). :func:`map_inventory` then maps the inventory
onto a family with the mapping rules of Yosys ``synth_xilinx`` / ``synth_ecp5``:

- a product of ``a x b`` bits (``a, b >= 2`` and ``a + b >= 9``) takes
  ``ceil(a / A) * ceil(b / B)`` DSP blocks, ``(A, B)`` = (25, 18) on 7-series, (27, 18) on
  UltraScale+, (18, 18) on ECP5; smaller ones are LUT logic of about ``a * b / 2`` LUTs;
- an adder, counter or comparator bit is one LUT (plus carry logic, not counted here); a 2:1
  multiplexer bit is half a LUT6;
- a constant table (ROM) becomes LUT logic: ``1.5 * width * ceil(depth / 64)`` LUT6s (the half
  for the wide-multiplexer tree);
- a memory of at least 4 Kib whose depth is at least 64 becomes block RAM: RAMB18 halves in
  1K x 18 / 512 x 36 / 2K x 9 ... aspect ratios (counted in RAMB36), DP16KD on ECP5; smaller
  memories become distributed RAM of ``width * ceil(depth / 64)`` LUT6s;
- on ECP5 every LUT6 of the above counts as 2.2 LUT4s;
- registers are flip-flops one for one, except multiply-accumulate registers on Xilinx, which
  the DSP48 absorbs.

The constants of each inventory are counted from ``rtl/*.py``. The model has no fitted terms;
:func:`calibrate` optionally scales it per engine, family and resource to a synthesised dataset.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tessera.models.softmax import LOG2E

__all__ = [
    "RESOURCES",
    "Inventory",
    "analytic_resources",
    "calibrate",
    "inventory",
    "map_inventory",
]

#: Resources the model predicts.
RESOURCES: tuple[str, ...] = ("lut", "ff", "dsp", "bram")

# DSP operand widths (signed) per family: DSP48E1 25x18, DSP48E2 27x18, MULT18X18D 18x18.
_DSP_WIDTHS: dict[str, tuple[int, int]] = {"xc7": (25, 18), "xcup": (27, 18), "ecp5": (18, 18)}
# LUT inputs per family: ECP5 has LUT4s, which hold about a third of a LUT6's logic.
_LUT_SCALE: dict[str, float] = {"xc7": 1.0, "xcup": 1.0, "ecp5": 2.2}

# AXI-Lite register bridge plus start / status control (the GEMM and attention engines): about
# 120 LUTs of address decode and read multiplexing and 90 flip-flops (counted on rtl/axi.py).
_CSR_LUT, _CSR_FF = 120, 90


@dataclass
class Inventory:
    """The hardware a configuration elaborates to.

    Attributes
    ----------
    multipliers : list of (int, int)
        Operand widths of every variable x variable product.
    reg_bits : int
        Flip-flop bits (pipeline registers, accumulators, counters, control).
    adder_bits : int
        Bits of adders, subtractors, counters and comparators.
    mux_bits : int
        2:1 multiplexer bit-inputs (a k:1 mux of w bits counts ``(k - 1) * w``).
    memories : list of (int, int)
        ``(depth, width)`` of every RAM.
    roms : list of (int, int)
        ``(depth, width)`` of every constant table; Yosys turns them into LUT logic.
    fixed_lut, fixed_ff : int
        Control logic counted as a block (register bridges, state machines).
    accumulator_bits : int
        Register bits of multiply-accumulate loops, part of ``reg_bits``: Xilinx DSP48 blocks
        absorb them into their P register, so they are flip-flops only on ECP5.
    """

    multipliers: list[tuple[int, int]] = field(default_factory=list)
    reg_bits: int = 0
    adder_bits: int = 0
    mux_bits: int = 0
    memories: list[tuple[int, int]] = field(default_factory=list)
    roms: list[tuple[int, int]] = field(default_factory=list)
    fixed_lut: int = 0
    fixed_ff: int = 0
    accumulator_bits: int = 0


def _gemm(cfg: Any) -> Inventory:
    r, c, a = cfg.rows, cfg.cols, cfg.acc_bits
    macs = r * c
    d = cfg.dim_bits
    inv = Inventory(fixed_lut=_CSR_LUT, fixed_ff=_CSR_FF)
    inv.multipliers = [(8, 8)] * macs + [(a, 32)] * c  # MAC array + a requantizer per column
    # accumulators and drain bank, operand pipeline (two stages), C output register
    inv.reg_bits = 2 * macs * a + 16 * (r + c) + c * 32 + 2 * max(cfg.a_beat_bytes, r) * 8
    inv.reg_bits += 2 * max(cfg.b_beat_bytes, c) * 8 + 3 * d + 2 * (d + 7) + 32 + 53
    inv.accumulator_bits = macs * a
    # requantizer per column: the (a + 32)-bit product is rounded (adder) and shifted right by a
    # run-time amount 0..63 (a 6-level barrel shifter, plus the rounding-bit mask beside it)
    product = a + 32
    inv.adder_bits = macs * a + c * (product + cfg.out_bits + 16) + 5 * d + 32
    # drain: each column selects among r bank rows; slice adapters pick bytes from wide beats
    inv.mux_bits = c * 32 * max(0, r - 1) + macs * a + c * product * 6 * 2
    inv.mux_bits += 8 * (r * max(1, cfg.a_beat_bytes // r) + c * max(1, cfg.b_beat_bytes // c))
    return inv


def _exp_unit(t_frac: int, lut_bits: int, exp_frac: int, in_bits: int) -> Inventory:
    """``ExpNeg`` (rtl/exp.py): constant multiply by log2(e), table + interpolation, shift."""
    inv = Inventory()
    # d * log2(e): Yosys maps a multiply by a wide constant onto a DSP like any other product
    inv.multipliers.append((in_bits + 1, LOG2E.bit_length()))
    inv.roms = [((1 << lut_bits) + 1, 2 * (exp_frac + 1))]
    interp = max(0, t_frac - lut_bits)
    if interp:
        inv.multipliers.append((exp_frac + 1, interp))
    inv.adder_bits = 2 * (in_bits + 8) + exp_frac + 2
    inv.mux_bits = (exp_frac + 1) * max(1, (in_bits + 2).bit_length())  # barrel shift
    inv.reg_bits = 4 * (exp_frac + in_bits + 4)
    return inv


def _merge(*parts: Inventory) -> Inventory:
    out = Inventory()
    for p in parts:
        out.multipliers += p.multipliers
        out.memories += p.memories
        out.roms += p.roms
        out.reg_bits += p.reg_bits
        out.adder_bits += p.adder_bits
        out.mux_bits += p.mux_bits
        out.fixed_lut += p.fixed_lut
        out.fixed_ff += p.fixed_ff
        out.accumulator_bits += p.accumulator_bits
    return out


def _softmax_core(cfg: Any, rows_in_parallel: int = 1, exp_units: int = 2) -> Inventory:
    """Online softmax datapath of ``rows_in_parallel`` rows with ``exp_units`` exp units each."""
    sum_bits, recip_bits = cfg.sum_bits, cfg.recip_bits
    exp = _exp_unit(cfg.t_frac, cfg.lut_bits, cfg.exp_frac, cfg.in_bits)
    core = Inventory()
    # running sum rescale (sum x e) and the output product (e x 1/sum)
    core.multipliers = [(sum_bits, cfg.exp_frac + 1), (cfg.exp_frac + 1, recip_bits)]
    # restoring divider: recip_bits-bit quotient, sum_bits remainder
    core.adder_bits = sum_bits + recip_bits + 2 * cfg.in_bits + cfg.out_bits + 16
    core.reg_bits = 2 * (cfg.in_bits + sum_bits + recip_bits) + 2 * sum_bits + 3 * recip_bits
    core.reg_bits += cfg.out_bits + 4 * cfg.len_bits + 16
    core.mux_bits = 2 * (sum_bits + cfg.in_bits)
    return _merge(*([core] * rows_in_parallel), *([exp] * (exp_units * rows_in_parallel)))


def _softmax(cfg: Any) -> Inventory:
    inv = _softmax_core(cfg)
    inv.memories.append((2 * cfg.max_len, cfg.in_bits))
    return inv


def _gelu(cfg: Any) -> Inventory:
    n, lanes = cfg.in_bits, cfg.lanes
    slope_bits = cfg.rom_bits + 1
    lane = Inventory()
    lane.roms = [(cfg.rom_entries, cfg.rom_bits + slope_bits)]
    if cfg.low_bits:
        lane.multipliers = [(slope_bits, cfg.low_bits + 1)]
    lane.adder_bits = 3 * n + cfg.rom_bits + 8
    lane.reg_bits = 3 * n + 2 * (cfg.rom_bits + slope_bits) + n
    lane.mux_bits = 2 * n
    return _merge(*([lane] * lanes), Inventory(reg_bits=4, fixed_lut=6))


def _layernorm(cfg: Any) -> Inventory:
    inv = Inventory()
    inv.memories = [(2 * cfg.dim, cfg.in_bits), (cfg.dim, 2 * cfg.param_bits)]
    inv.roms = [(1 << cfg.rsqrt_lut_bits, cfg.rsqrt_frac + 1)]
    mul_bits = max(cfg.sum_bits, cfg.mantissa_bits + 1)  # as rtl/layernorm.py sizes it
    c_bits = cfg.center_bits
    inv.multipliers = [
        (cfg.in_bits, cfg.in_bits),  # x * x
        (c_bits, cfg.rsqrt_frac + 1),  # c * y
        (cfg.norm_bits, cfg.param_bits),  # z * gamma
        (mul_bits, mul_bits),  # shared sequencer multiplier
    ]
    if cfg.dim & (cfg.dim - 1):
        # dim * S2 and dim * x: a power-of-two dim is a shift, any other a constant product
        dim_bits = cfg.dim.bit_length()
        inv.multipliers += [(cfg.square_sum_bits, dim_bits), (cfg.in_bits, dim_bits)]
    inv.adder_bits = cfg.sum_bits + cfg.square_sum_bits + cfg.var_bits + c_bits
    inv.adder_bits += cfg.norm_bits + cfg.out_bits + 3 * cfg.dim.bit_length() + 16
    inv.reg_bits = 2 * (cfg.sum_bits + cfg.square_sum_bits) + cfg.var_bits + 4 * mul_bits
    inv.reg_bits += 2 * (c_bits + cfg.norm_bits + cfg.param_bits) + cfg.out_bits + 40
    # normalising shift of the variance and the output shift of c*y: barrel shifters
    out_product = c_bits + cfg.rsqrt_frac + 1
    inv.mux_bits = 2 * cfg.var_bits + 3 * mul_bits
    inv.mux_bits += cfg.var_bits * max(1, cfg.var_bits.bit_length())
    inv.mux_bits += out_product * max(1, out_product.bit_length())
    inv.fixed_lut = 40
    return inv


def _attention(cfg: Any) -> Inventory:
    p, lanes, beats = cfg.parallelism, cfg.lanes, cfg.beats_per_row
    sm = cfg.softmax
    dot, acc = cfg.dot_bits, cfg.acc_bits
    inv = Inventory(fixed_lut=_CSR_LUT, fixed_ff=_CSR_FF)
    inv.multipliers = [(8, 8)] * (p * lanes)  # q . k
    inv.multipliers += [(cfg.weight_bits + 1, 8)] * (p * lanes)  # weights x v
    inv.multipliers += [(dot, 32)] * p  # score requantization, one per query row
    # P query rows on chip, P*D accumulators of the output, per-row score pipeline
    inv.reg_bits = p * cfg.head_dim * 8 + p * beats * lanes * acc + p * (dot + 2 * sm.sum_bits)
    inv.reg_bits += 3 * lanes * 8 + p * lanes * 16
    inv.adder_bits = p * lanes * (dot + acc) + p * 2 * sm.sum_bits
    inv.mux_bits = p * beats * lanes * acc
    inv.memories = [(cfg.max_seq, p * (cfg.score_bits + 1))]
    # one exp unit per row, shared by the online sum (phase K) and the weights (phase V)
    return _merge(inv, _softmax_core(sm, rows_in_parallel=p, exp_units=1))


_INVENTORIES = {
    "gemm": _gemm,
    "softmax": _softmax,
    "gelu": _gelu,
    "layernorm": _layernorm,
    "attention": _attention,
}


def inventory(engine: str, cfg: Any) -> Inventory:
    """The :class:`Inventory` of one engine configuration.

    Parameters
    ----------
    engine : {"gemm", "softmax", "gelu", "layernorm", "attention"}
        Engine name.
    cfg : EngineConfig
        Its configuration.

    Returns
    -------
    Inventory
    """
    if engine not in _INVENTORIES:
        raise ValueError(f"unknown engine {engine!r}; allowed: {', '.join(_INVENTORIES)}")
    return _INVENTORIES[engine](cfg)


def _bram18_count(depth: int, width: int) -> int:
    # RAMB18 aspect ratios (depth x width): 512x36, 1Kx18, 2Kx9, 4Kx4, 8Kx2, 16Kx1.
    for d, w in ((512, 36), (1024, 18), (2048, 9), (4096, 4), (8192, 2), (16384, 1)):
        if depth <= d:
            return math.ceil(width / w)
    return math.ceil(depth / 16384) * width


def map_inventory(inv: Inventory, family: str) -> dict[str, float]:
    """Map an inventory onto a family.

    Parameters
    ----------
    inv : Inventory
        Hardware to map.
    family : {"xc7", "xcup", "ecp5"}
        Target family.

    Returns
    -------
    dict
        ``lut``, ``ff``, ``dsp``, ``bram`` (RAMB36 on Xilinx, DP16KD on ECP5).
    """
    if family not in _DSP_WIDTHS:
        raise ValueError(f"unknown family {family!r}; allowed: {', '.join(_DSP_WIDTHS)}")
    wa, wb = _DSP_WIDTHS[family]
    dsp = 0
    lut = float(inv.fixed_lut + inv.adder_bits) + inv.mux_bits / 2
    for a, b in inv.multipliers:
        a, b = max(a, b), min(a, b)
        if b >= 2 and a + b >= 9:
            dsp += math.ceil(a / wa) * math.ceil(b / wb)
        else:
            lut += a * b / 2
    bram = 0.0
    for depth, width in inv.memories:
        if depth * width >= 4096 and depth >= 64:
            halves = _bram18_count(depth, width)
            bram += halves / 2 if family != "ecp5" else halves
        else:
            lut += width * math.ceil(depth / 64)
    for depth, width in inv.roms:
        # one LUT6 per 64 words of each output bit, and half again for the MUXF7/F8 tree
        lut += 1.5 * width * math.ceil(depth / 64)
    return {
        "lut": lut * _LUT_SCALE[family],
        "ff": float(
            inv.reg_bits + inv.fixed_ff - (inv.accumulator_bits if family != "ecp5" else 0)
        ),
        "dsp": float(dsp),
        "bram": bram,
    }


def analytic_resources(
    engine: str,
    cfg: Any,
    family: str,
    scales: Mapping[tuple[str, str, str], float] | None = None,
) -> dict[str, float]:
    """Predicted LUT, FF, DSP and BRAM of one design on one family.

    Parameters
    ----------
    engine : str
        Engine name.
    cfg : EngineConfig
        Its configuration.
    family : {"xc7", "xcup", "ecp5"}
        Target family.
    scales : mapping, optional
        ``(engine, family, resource) -> factor`` from :func:`calibrate`; default none (the raw
        first-principles counts).

    Returns
    -------
    dict
        ``lut``, ``ff``, ``dsp``, ``bram``.
    """
    counts = map_inventory(inventory(engine, cfg), family)
    if scales:
        counts = {k: v * scales.get((engine, family, k), 1.0) for k, v in counts.items()}
    return counts


def calibrate(
    rows: Iterable[tuple[str, Any, str, Mapping[str, float]]],
) -> dict[tuple[str, str, str], float]:
    """One scale factor per engine, family and resource: the geometric mean of actual / model.

    Parameters
    ----------
    rows : iterable of (engine, cfg, family, actual)
        Synthesised designs; ``actual`` maps resource names to counts.

    Returns
    -------
    dict
        ``(engine, family, resource) -> factor``; pairs with a zero on either side are skipped.
    """
    logs: dict[tuple[str, str, str], list[float]] = {}
    for engine, cfg, family, actual in rows:
        model = map_inventory(inventory(engine, cfg), family)
        for name in RESOURCES:
            got, predicted = float(actual.get(name, 0) or 0), model[name]
            if got > 0 and predicted > 0:
                logs.setdefault((engine, family, name), []).append(math.log(got / predicted))
    return {k: math.exp(sum(v) / len(v)) for k, v in logs.items()}
