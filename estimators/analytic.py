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
  memories become distributed RAM of ``width * ceil(depth / 64)`` LUT6s (the MoE inventory
  lists its memories after replaying Yosys's cost-based choice and its copy per read port);
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

from tessera.models.moe import moe_image_layout
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


def _range_bits(n: int) -> int:
    """Width of a counter over ``range(n)``, as Amaranth sizes it."""
    return (n - 1).bit_length()


# Yosys memory_libmap's 7-series choices (brams_xc4v.txt, lutrams_xc5v.txt) as (cell cost,
# width-scaled part of it, RAMB18s per cell, write-enable byte, read ports per copy,
# ((address bits, width), ...)).
_BLOCK_RAMS = (
    (129, 0, 1, 9, 1, ((14, 1), (13, 2), (12, 4), (11, 9), (10, 18), (9, 36))),  # RAMB18
    (257, 0, 2, 9, 1, ((15, 1), (14, 2), (13, 4), (12, 9), (11, 18), (10, 36), (9, 72))),
)
_LUT_RAMS = (
    (8, 7, 0, 0, 1, ((5, 6), (6, 3))),  # simple dual port
    (8, 8, 0, 0, 1, ((5, 4), (6, 2), (7, 1))),  # dual port
    (7, 7, 0, 0, 3, ((5, 2), (6, 1))),  # quad port: three read ports per copy
)


def _libmap(depth: int, width: int, read_ports: int, rams: tuple[Any, ...]) -> tuple[float, int]:
    """memory_libmap's cheapest mapping of a one-write, ``read_ports``-read memory onto
    ``rams``: its cost, and the RAMB18s of one copy."""
    best = (math.inf, 0)
    for cost, widthscale, halves, byte, reads, geometries in rams:
        copies = math.ceil(read_ports / reads)  # read ports at distinct addresses replicate
        for abits, unit in geometries:
            rows = math.ceil(depth / (1 << abits))
            # a word padded to whole write-enable bytes; rows share a cell's width where they fit
            step = min(byte, unit) if byte else unit
            cells = math.ceil(rows * step * math.ceil(width / step) / unit)
            total = (cost - widthscale) * cells * copies
            total += widthscale * rows * width / unit * copies
            # output multiplexers and write decoders across rows, soft logic per read port
            total += 0.5 * (rows - 1) * width * read_ports + (0.5 * rows if rows > 1 else 0)
            best = min(best, (total + 2 * read_ports, cells * halves))
    return best


def _ram(depth: int, width: int, read_ports: int) -> list[tuple[int, int]]:
    """A memory as :func:`map_inventory` should see it, one entry per read port.

    Yosys's ``memory_libmap`` picks block RAM, LUT RAM or flip-flops by cost (7-series costs
    here; UltraScale+ LUT RAM is cheaper, so it keeps a few more small memories out of block
    RAM) and copies a memory once per read port. A block RAM keeps its shape where
    :func:`map_inventory` counts its blocks alike, if need be widened within them to pass the
    4 Kib rule; otherwise it is listed as its blocks, 512 x 36 each. A LUT RAM of 4 Kib or
    more is split by width (same LUT count).
    """
    block, halves = _libmap(depth, width, read_ports, _BLOCK_RAMS)
    if block < min(depth * width, _libmap(depth, width, read_ports, _LUT_RAMS)[0]):
        shape = (512, 36 * halves)
        for w in (width, max(width, -(-4096 // depth))):
            if depth >= 64 and depth * w >= 4096 and _bram18_count(depth, w) == halves:
                shape = (depth, w)
                break
        return [shape] * read_ports
    if depth < 64 or depth * width < 4096:
        return [(depth, width)] * read_ports
    slice_bits = (4096 - 1) // depth  # widest slice below map_inventory's 4 Kib
    slices = [(depth, min(slice_bits, width - lo)) for lo in range(0, width, slice_bits)]
    return slices * read_ports


def _moe(cfg: Any) -> Inventory:
    """``MoeEngine`` (rtl/moe.py): MAC array, per-phase post-processing, routing, buffers, fetch."""
    lay = moe_image_layout(cfg)
    r, c, e, d, h = cfg.rows, cfg.cols, cfg.experts, cfg.dim, cfg.expert_hidden
    t, k, bb, a = cfg.max_tokens, cfg.top_k, cfg.bus_bytes, cfg.acc_bits
    td, th, te = d // c, -(-h // c), -(-e // c)
    macs = r * c
    widest = max(cfg.logit_bits, cfg.gelu_bits, cfg.act_bits)
    comb_bits = cfg.act_bits + cfg.gate_bits + k.bit_length() + 1  # weighted-sum accumulator
    token_bits = max(1, (t - 1).bit_length())
    t_bits, e_bits = t.bit_length(), _range_bits(e)  # queue length, expert index
    bank_words = max(lay.gate_beats, lay.expert_beats)
    wa_bits = _range_bits(2 * bank_words * bb + 2 * c + 1)  # weight byte address
    byte_shift = bb.bit_length() - 1
    g = cfg.gelu  # one lane per array column

    inv = Inventory(fixed_lut=_CSR_LUT, fixed_ff=_CSR_FF)
    # MAC array, a requantizer per column after it and one after the GELU, and the W2 combine
    # (value x gate weight with a zero sign bit on the unsigned weight)
    inv.multipliers = [(8, 8)] * macs + [(a, 32)] * c + [(cfg.gelu_bits, 32)] * c
    inv.multipliers += [(cfg.act_bits, cfg.gate_bits + 1)] * c
    # the accumulators, the registered W2 products and GELU interpolations (counted in the GELU
    # lanes' registers): DSP P registers
    interp_bits = g.rom_bits + g.low_bits + 2 if g.low_bits else 0
    inv.accumulator_bits = macs * a + c * comb_bits + c * interp_bits

    # Every Memory, once per read port (each reads its own address). The token, hidden and
    # queue buffers have a port per array row; the weight buffer (two banks) one per column for
    # the weights and one per column for the biases (one per bias byte when a bus word is
    # narrower than a bias).
    bias_ports = c if bb >= 4 else 4 * c
    inv.memories = _ram(2 * bank_words, 8 * bb, c + bias_ports)
    inv.memories += _ram(t * td, 8 * c, r)  # tokens
    inv.memories += _ram(t * th, 8 * c, r)  # hidden activations
    inv.memories += _ram(e * t, token_bits + cfg.gate_bits, r)  # queues: (token, gate weight)
    inv.memories += _ram(t * te, c * cfg.logit_bits, 1)  # logits
    inv.memories += _ram(t * td, c * comb_bits, 1)  # output accumulators

    # Registers: accumulators and W2 products; header words (3 requant words of 31 + 6 bits
    # per bank); CSRs beyond the generic bridge (TOKENS, TASK, WEIGHT_BASE, CYCLES,
    # WEIGHT_BYTES, queue lengths)
    reg = macs * a + c * comb_bits + 2 * 3 * 37 + 5 * 32 - byte_shift + e * t_bits + 2 * e_bits
    # fetch: address, beats left / received, bank flags; sequencer counters and the tile's
    # addressing state; the token load counter
    reg += 32 + 2 * bank_words.bit_length() + 8
    reg += 2 * _range_bits(t + r + 1) + _range_bits(max(te, th, td) + 1) + 2 * t_bits
    reg += _range_bits(max(d, h) + 1) + _range_bits(max(td, th) + 1) + 2 * _range_bits(c)
    reg += wa_bits + _range_bits(r) + 3 * (t * td).bit_length() + 16
    # byte selects of the weight and bias read ports
    reg += c * byte_shift + (c * (byte_shift - 2) if bb >= 4 else 4 * c * byte_shift)
    # post-processing: drained row stage, GELU tags, hidden stage, y register
    hid_addr_bits = (t * th + r * th).bit_length()
    reg += c * widest + token_bits + _range_bits(t + r + 1) + cfg.gate_bits + 8
    reg += 4 * hid_addr_bits + c * cfg.act_bits + c * 8 + 8
    # routing: top-k slots (value, expert) and the scan / feed / collect counters
    reg += k * (cfg.logit_bits + e_bits) + 3 * e.bit_length() + 2 * _range_bits(c)
    reg += 3 * k.bit_length() + e_bits + 3 * e_bits + 8
    inv.reg_bits = reg

    # Adders and comparators: CSR counters and checks, 32-bit fetch address arithmetic, per-row
    # operand addresses (row = m0 + r, its bound check, token / hidden / queue addresses), the
    # weight and bias port addresses, the requantizers' rounding adders, the W2 read-modify-write
    # and the output rounding, the queue-length counters.
    addr_bits = max((t * td).bit_length(), (t * th).bit_length())
    adders = 4 * 32 + 64 + 3 * 32 + 3 * bank_words.bit_length()
    adders += r * (3 * _range_bits(t + r + 1) + 2 * addr_bits + (e * t).bit_length())
    adders += (c - 1) * wa_bits + 4 * wa_bits + c * wa_bits
    adders += c * (a + 32 + widest + 16) + c * (cfg.gelu_bits + 32 + cfg.act_bits + 16)
    adders += 2 * c * comb_bits + e * t_bits + 6 * _range_bits(max(d, h) + 1) + 32
    inv.adder_bits = adders

    # Multiplexers: drain row select, bias-or-accumulator preload, per-row operand select (token
    # or hidden word, then the byte of lane k % cols), bus-word byte selects, barrel shifters of
    # the two requantizers per column, per-phase saturation, top-k slot shifting and picks,
    # queue-length picks and the CSR read multiplexer.
    mux = c * a * max(0, r - 1) + macs * a
    mux += r * (8 * c + 8 * (c - 1))
    mux += c * 8 * (bb - 1) + (c * 32 * (bb // 4 - 1) if bb >= 4 else 4 * c * 8 * (bb - 1))
    mux += c * ((a + 32) + (cfg.gelu_bits + 32)) * 6 * 2 + 2 * c * widest
    mux += (c - 1) * cfg.logit_bits + 3 * k * (cfg.logit_bits + e_bits)
    mux += 3 * (e - 1) * t_bits + (r - 1) * (token_bits + cfg.gate_bits) + 4 * 37
    mux += 5 * 32 + e * t_bits + 3 * wa_bits
    inv.mux_bits = mux

    # routing softmax over the top_k selected logits (its row buffer included), GELU per column
    sm = cfg.softmax
    if k == 1:
        # A one-element row is its own maximum: the running sum is the constant exp(0), so
        # Yosys removes the sum's exp unit and its rescale product.
        routing = _softmax_core(sm, exp_units=1)
        routing.multipliers.remove((sm.sum_bits, sm.exp_frac + 1))
    else:
        routing = _softmax_core(sm)
    routing.memories += _ram(2 * k, cfg.logit_bits, 1)
    return _merge(inv, routing, _gelu(g))


_INVENTORIES = {
    "gemm": _gemm,
    "softmax": _softmax,
    "gelu": _gelu,
    "layernorm": _layernorm,
    "attention": _attention,
    "moe": _moe,
}


def inventory(engine: str, cfg: Any) -> Inventory:
    """The :class:`Inventory` of one engine configuration.

    Parameters
    ----------
    engine : {"gemm", "softmax", "gelu", "layernorm", "attention", "moe"}
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
