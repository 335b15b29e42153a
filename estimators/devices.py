"""Resource budgets of the FPGA devices tessera targets, from the vendors' public data sheets.

BRAM is counted in 36 Kb blocks on every device (an ECP5 DP16KD is 18 Kb, so half a block), so
budgets compare across vendors; :attr:`Device.bram_native` keeps the vendor's own unit.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEVICES", "Device", "get_device"]


@dataclass(frozen=True)
class Device:
    """One device's logic resources.

    Attributes
    ----------
    name : str
        Part name as used on the command line.
    family : str
        Synthesis family of the part (``xc7``, ``xcup``, ``ecp5``).
    lut : int
        Logic LUTs (LUT6 on Xilinx, LUT4 on ECP5).
    ff : int
        Flip-flops.
    dsp : int
        DSP slices (DSP48E1 / DSP48E2) or ECP5 18x18 multipliers.
    bram36 : float
        Block RAM in 36 Kb blocks.
    bram_native : int
        Block RAM in the vendor's unit (RAMB36 on Xilinx, DP16KD on ECP5).
    source : str
        Data sheet the numbers come from.
    """

    name: str
    family: str
    lut: int
    ff: int
    dsp: int
    bram36: float
    bram_native: int
    source: str

    def budget(self) -> dict[str, float]:
        """``lut``, ``ff``, ``dsp``, ``bram`` (in the family's native unit, as synthesis counts)."""
        return {"lut": self.lut, "ff": self.ff, "dsp": self.dsp, "bram": self.bram_native}


DEVICES: dict[str, Device] = {
    # AMD DS190 "Zynq-7000 SoC Data Sheet: Overview", Table 1 (Z-7020): 53,200 LUTs,
    # 106,400 flip-flops, 220 DSP slices, 140 block RAMs of 36 Kb (4.9 Mb).
    "xc7z020": Device("xc7z020", "xc7", 53_200, 106_400, 220, 140, 140, "AMD DS190, Table 1"),
    # AMD DS891 "Zynq UltraScale+ MPSoC Data Sheet: Overview", ZU3EG: 70,560 LUTs, 141,120 FFs,
    # 360 DSP slices, 216 block RAMs of 36 Kb (7.6 Mb).
    "xczu3eg": Device("xczu3eg", "xcup", 70_560, 141_120, 360, 216, 216, "AMD DS891, ZU3EG"),
    # AMD DS987 "Kria K26 SOM Data Sheet" (XCK26, a ZU5EV-class die): 117,120 LUTs,
    # 234,240 FFs, 1,248 DSP slices, 144 block RAMs of 36 Kb (plus 64 UltraRAMs, not counted).
    "xck26": Device("xck26", "xcup", 117_120, 234_240, 1_248, 144, 144, "AMD DS987, Table 1"),
    # AMD DS891, ZU9EG (the ZCU102 part of Edge-MoE): 274,080 LUTs, 548,160 FFs, 2,520 DSP
    # slices, 912 block RAMs of 36 Kb (32.1 Mb).
    "xczu9eg": Device("xczu9eg", "xcup", 274_080, 548_160, 2_520, 912, 912, "AMD DS891, ZU9EG"),
    # Lattice FPGA-DS-02012 "ECP5 and ECP5-5G Family Data Sheet", Table 1.1 (LFE5U-85): 84 K
    # LUT4s (83,640) with one flip-flop each, 156 18x18 multipliers, 208 sysMEM blocks of 18 Kb.
    "LFE5U-85F": Device(
        "LFE5U-85F", "ecp5", 83_640, 83_640, 156, 104, 208, "Lattice FPGA-DS-02012, Table 1.1"
    ),
}


def get_device(name: str) -> Device:
    """The :class:`Device` of a part name (case-insensitive).

    Raises
    ------
    ValueError
        If the part is unknown; the message lists the known ones.
    """
    for key, device in DEVICES.items():
        if key.lower() == name.lower():
            return device
    raise ValueError(f"unknown device {name!r}; choose one of {', '.join(DEVICES)}")
