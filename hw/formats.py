"""Element and scale formats as the hardware sees them (docs/numerics.md §1, §7).

This mirrors the golden model's format table on purpose: hw/ never imports golden/, and the tests check
that the two agree code for code.
"""

from dataclasses import dataclass

from amaranth.lib import data

__all__ = ["Format", "E2M1", "E4M3", "UE4M3"]


@dataclass(frozen=True)
class Format:
    """A small binary float format: subnormals, no infinities, optional all-ones NaN (the "fn" variant).

    An unsigned format is stored in ``code_bits`` bits whose top bit must be 0; the decoder flags a code
    with it set as NaN (invalid). ``decoded_layout`` is the unpacked form a decoder emits:
    value = (-1)**sign * significand * 2**(exponent - bias - mantissa_bits).
    """

    name: str
    exponent_bits: int
    mantissa_bits: int
    bias: int
    signed: bool
    has_nan: bool
    code_bits: int

    def __post_init__(self):
        for field in ("exponent_bits", "mantissa_bits", "bias", "code_bits"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{field} must be an int, not {value!r}")
        for field in ("signed", "has_nan"):
            if not isinstance(getattr(self, field), bool):
                raise TypeError(f"{field} must be a bool, not {getattr(self, field)!r}")
        if self.exponent_bits < 1:
            raise ValueError(f"exponent_bits must be at least 1, not {self.exponent_bits}")
        if self.mantissa_bits < 0:
            raise ValueError(f"mantissa_bits must be non-negative, not {self.mantissa_bits}")
        if self.has_nan and self.exponent_bits + self.mantissa_bits < 2:
            raise ValueError("A format with NaN needs at least 2 exponent and mantissa bits")
        needed = self.magnitude_bits + int(self.signed)
        if self.code_bits < needed:
            raise ValueError(f"code_bits must be at least {needed} for this format, not {self.code_bits}")
        if self.signed and self.code_bits != needed:
            raise ValueError(f"A signed format must have code_bits == {needed}, not {self.code_bits}")

    @property
    def magnitude_bits(self):
        return self.exponent_bits + self.mantissa_bits

    @property
    def significand_bits(self):
        return self.mantissa_bits + 1

    @property
    def decoded_layout(self):
        fields = {}
        if self.signed:
            fields["sign"] = 1
        fields["exponent"] = self.exponent_bits
        fields["significand"] = self.significand_bits
        fields["zero"] = 1
        if self.has_nan:
            fields["nan"] = 1
        return data.StructLayout(fields)

    def __repr__(self):
        return self.name.upper()


E2M1 = Format("e2m1", exponent_bits=2, mantissa_bits=1, bias=1, signed=True, has_nan=False, code_bits=4)
E4M3 = Format("e4m3", exponent_bits=4, mantissa_bits=3, bias=7, signed=True, has_nan=True, code_bits=8)
UE4M3 = Format("ue4m3", exponent_bits=4, mantissa_bits=3, bias=7, signed=False, has_nan=True, code_bits=8)
