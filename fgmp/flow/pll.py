"""PLL parameters for a board clock at a chosen frequency: the ECP5 EHXPLLL (ULX3S, 25 MHz oscillator)
and the iCE40 SB_PLL40_PAD (iCEBreaker, 12 MHz oscillator), found by exhaustive search in Python.

ECP5 (Lattice TN1263, "ECP5 and ECP5-5G sysCLOCK PLL/DCS/DCC Usage Guide"), feedback from CLKOP:

    f_PFD = f_in / CLKI_DIV             3.125 <= f_PFD <= 400 MHz     CLKI_DIV 1..128
    f_out = f_PFD * CLKFB_DIV           3.125 <= f_out <= 400 MHz     CLKFB_DIV 1..80
    f_VCO = f_out * CLKOP_DIV           400 <= f_VCO <= 800 MHz       CLKOP_DIV 1..128

iCE40 (Lattice TN1251, "iCE40 sysCLOCK PLL Design and Usage Guide"), simple feedback:

    f_PFD = f_in / (DIVR + 1)           10 <= f_PFD <= 133 MHz        DIVR 0..15
    f_VCO = f_PFD * (DIVF + 1)          533 <= f_VCO <= 1066 MHz      DIVF 0..127
    f_out = f_VCO / 2**DIVQ             16 <= f_out <= 275 MHz        DIVQ 1..6

Every legal divider setting is enumerated (a few thousand); the one whose output is closest to the
request wins, ties going to the highest f_PFD (least jitter from the phase detector), then to the VCO
nearest the middle of its range. A request farther than ``TOLERANCE`` from every reachable output is
refused with the nearest reachable frequencies below and above it, so the caller never gets a clock
other than the one asked for without being told.
"""

from dataclasses import dataclass

__all__ = ["TOLERANCE", "PllError", "Ecp5Pll", "Ice40Pll", "ecp5_pll", "ice40_pll"]

# Largest relative difference between the requested and the achieved output frequency.
TOLERANCE = 0.001


class PllError(ValueError):
    """The requested frequency cannot be made from the board's oscillator."""


@dataclass(frozen=True)
class Ecp5Pll:
    name = "ECP5 EHXPLLL"
    input_mhz: float
    clki_div: int
    clkfb_div: int
    clkop_div: int

    @property
    def pfd_mhz(self):
        return self.input_mhz / self.clki_div

    @property
    def output_mhz(self):
        return self.pfd_mhz * self.clkfb_div

    @property
    def vco_mhz(self):
        return self.output_mhz * self.clkop_div

    def parameters(self):
        """EHXPLLL parameters (feedback from CLKOP, 0 degrees: CPHASE = DIV - 1 as Diamond writes it)."""
        return {"CLKI_DIV": self.clki_div, "CLKFB_DIV": self.clkfb_div, "CLKOP_DIV": self.clkop_div,
                "CLKOP_CPHASE": self.clkop_div - 1, "CLKOP_FPHASE": 0, "CLKOP_ENABLE": "ENABLED",
                "FEEDBK_PATH": "CLKOP", "PLLRST_ENA": "DISABLED", "INTFB_WAKE": "DISABLED",
                "STDBY_ENABLE": "DISABLED", "DPHASE_SOURCE": "DISABLED", "OUTDIVIDER_MUXA": "DIVA",
                "OUTDIVIDER_MUXB": "DIVB", "OUTDIVIDER_MUXC": "DIVC", "OUTDIVIDER_MUXD": "DIVD"}

    def attributes(self):
        """The loop-filter attributes ecppll (prjtrellis) writes for every EHXPLLL, and the frequencies."""
        return {"FREQUENCY_PIN_CLKI": f"{self.input_mhz:g}", "FREQUENCY_PIN_CLKOP": f"{self.output_mhz:.6g}",
                "ICP_CURRENT": "12", "LPF_RESISTOR": "8", "MFG_ENABLE_FILTEROPAMP": "1", "MFG_GMCREF_SEL": "2"}


@dataclass(frozen=True)
class Ice40Pll:
    name = "iCE40 SB_PLL40_PAD"
    input_mhz: float
    divr: int
    divf: int
    divq: int

    @property
    def pfd_mhz(self):
        return self.input_mhz / (self.divr + 1)

    @property
    def vco_mhz(self):
        return self.pfd_mhz * (self.divf + 1)

    @property
    def output_mhz(self):
        return self.vco_mhz / 2 ** self.divq

    @property
    def filter_range(self):
        """The loop filter setting for f_PFD, as icepll (icestorm) chooses it."""
        for bound, value in ((17, 1), (26, 2), (44, 3), (66, 4), (101, 5)):
            if self.pfd_mhz < bound:
                return value
        return 6

    def parameters(self):
        return {"FEEDBACK_PATH": "SIMPLE", "DIVR": self.divr, "DIVF": self.divf, "DIVQ": self.divq,
                "FILTER_RANGE": self.filter_range}


def _check_mhz(name, value):
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"{name} must be a number of MHz, not {value!r}")
    if not value > 0:
        raise ValueError(f"{name} must be above 0 MHz, not {value}")
    return float(value)


def _ecp5_candidates(input_mhz):
    for clki in range(1, 129):
        pfd = input_mhz / clki
        if not 3.125 <= pfd <= 400:
            continue
        for clkfb in range(1, 81):
            out = pfd * clkfb
            if not 3.125 <= out <= 400:
                continue
            for clkop in range(1, 129):
                if 400 <= out * clkop <= 800:
                    yield Ecp5Pll(input_mhz, clki, clkfb, clkop)


def _ice40_candidates(input_mhz):
    for divr in range(16):
        pfd = input_mhz / (divr + 1)
        if not 10 <= pfd <= 133:
            continue
        for divf in range(128):
            vco = pfd * (divf + 1)
            if not 533 <= vco <= 1066:
                continue
            for divq in range(1, 7):
                if 16 <= vco / 2 ** divq <= 275:
                    yield Ice40Pll(input_mhz, divr, divf, divq)


def _search(candidates, family, input_mhz, output_mhz, vco_middle):
    input_mhz = _check_mhz("Input frequency", input_mhz)
    output_mhz = _check_mhz("Output frequency", output_mhz)
    settings = list(candidates(input_mhz))
    if not settings:
        raise PllError(f"The {family} PLL cannot run from a {input_mhz:g} MHz input")
    best = min(settings, key=lambda s: (abs(s.output_mhz - output_mhz), -s.pfd_mhz, abs(s.vco_mhz - vco_middle)))
    if abs(best.output_mhz - output_mhz) <= TOLERANCE * output_mhz:
        return best
    reachable = sorted({round(s.output_mhz, 4) for s in settings})
    below = [f for f in reachable if f < output_mhz]
    above = [f for f in reachable if f > output_mhz]
    nearest = " and ".join(f"{f:g} MHz" for f in (below[-1:] + above[:1]))
    raise PllError(f"The {family} PLL cannot make {output_mhz:g} MHz from {input_mhz:g} MHz "
                   f"(within {TOLERANCE:.1%}); the nearest it can make are {nearest}")


def ecp5_pll(input_mhz, output_mhz):
    """The EHXPLLL setting whose CLKOP is ``output_mhz`` (within TOLERANCE) from ``input_mhz``."""
    return _search(_ecp5_candidates, "ECP5", input_mhz, output_mhz, 600)


def ice40_pll(input_mhz, output_mhz):
    """The SB_PLL40 setting (simple feedback) whose output is ``output_mhz`` (within TOLERANCE)."""
    return _search(_ice40_candidates, "iCE40", input_mhz, output_mhz, 800)
