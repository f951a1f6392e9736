"""Bit-exact codecs for the element and scale formats of docs/numerics.md (§1, §2).

Every encode rounds the *exact* real value (or the exact quotient num/den) to nearest, ties to even,
once. The quotient is estimated in float64 and then corrected with exact float64 products against the
format's midpoints, so no intermediate rounding can leak into a result (§2 explains why the products are
exact).
"""

from dataclasses import dataclass
from functools import cached_property

import torch

__all__ = ["FloatFormat", "E2M1", "E4M3", "UE4M3", "decode", "encode", "encode_ratio", "decode_fields"]


@dataclass(frozen=True)
class FloatFormat:
    """A small binary floating-point format with subnormals and no infinities.

    ``has_nan``: the all-ones exponent-and-mantissa pattern is NaN (the OCP "fn" convention), so the largest
    finite magnitude code is one below it. ``signed=False`` formats are stored in ``code_bits`` bits whose
    top bit must be 0; a code with it set is invalid and decodes as NaN (UE4M3 block scales).
    """

    name: str
    exponent_bits: int
    mantissa_bits: int
    bias: int
    signed: bool
    has_nan: bool
    code_bits: int

    @property
    def magnitude_bits(self):
        return self.exponent_bits + self.mantissa_bits

    @property
    def nan_magnitude(self):
        return (1 << self.magnitude_bits) - 1 if self.has_nan else None

    @property
    def max_magnitude_code(self):
        top = (1 << self.magnitude_bits) - 1
        return top - 1 if self.has_nan else top

    @property
    def max_value(self):
        return self.magnitude_value(self.max_magnitude_code)

    @property
    def min_subnormal(self):
        return self.magnitude_value(1)

    def magnitude_value(self, magnitude_code):
        exponent_field = magnitude_code >> self.mantissa_bits
        mantissa_field = magnitude_code & ((1 << self.mantissa_bits) - 1)
        significand = mantissa_field + ((exponent_field != 0) << self.mantissa_bits)
        exponent = max(exponent_field, 1) - self.bias - self.mantissa_bits
        return float(significand) * 2.0**exponent

    @cached_property
    def _magnitudes(self):
        return torch.tensor(
            [self.magnitude_value(c) for c in range(self.max_magnitude_code + 1)], dtype=torch.float64
        )

    @cached_property
    def _midpoints(self):
        mags = self._magnitudes
        # Each midpoint has at most mantissa_bits + 2 significant bits: exact in float64.
        return (mags[1:] + mags[:-1]) / 2

    @cached_property
    def _code_values(self):
        """float64 value of every storable code (NaN for NaN and invalid codes)."""
        values = torch.full((1 << self.code_bits,), float("nan"), dtype=torch.float64)
        mags = self._magnitudes
        count = mags.numel()
        values[:count] = mags
        if self.signed:
            sign_bit = 1 << self.magnitude_bits
            values[sign_bit : sign_bit + count] = -mags
        return values

    def __repr__(self):
        return self.name.upper()


E2M1 = FloatFormat("e2m1", exponent_bits=2, mantissa_bits=1, bias=1, signed=True, has_nan=False, code_bits=4)
E4M3 = FloatFormat("e4m3", exponent_bits=4, mantissa_bits=3, bias=7, signed=True, has_nan=True, code_bits=8)
UE4M3 = FloatFormat("ue4m3", exponent_bits=4, mantissa_bits=3, bias=7, signed=False, has_nan=True, code_bits=8)


def _check_format(fmt):
    if not isinstance(fmt, FloatFormat):
        raise TypeError(f"Format must be a FloatFormat (E2M1, E4M3 or UE4M3), not {fmt!r}")


def _check_codes(codes, fmt):
    if not isinstance(codes, torch.Tensor):
        raise TypeError(f"Codes must be a torch.Tensor, not {type(codes).__name__}")
    if codes.dtype.is_floating_point or codes.dtype.is_complex or codes.dtype == torch.bool:
        raise TypeError(f"Codes must be an integer tensor, not {codes.dtype}")
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= 1 << fmt.code_bits):
        raise ValueError(f"{fmt} codes must lie in [0, {(1 << fmt.code_bits) - 1}]")


def _check_values(x, name="Input"):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, not {type(x).__name__}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating-point tensor, not {x.dtype}")
    if x.dtype.itemsize > 8:
        raise TypeError(f"{name} dtype {x.dtype} is wider than float64 and cannot be handled exactly")


_DEVICE_COPIES = {}


def _on_device(table, device):
    """A format table on ``device`` (made once per device: the tables are built on the CPU)."""
    if table.device == device:
        return table
    key = (id(table), device)
    found = _DEVICE_COPIES.get(key)
    if found is None:
        found = _DEVICE_COPIES[key] = table.to(device)
    return found


def _code_values_f64(codes, fmt):
    return _on_device(fmt._code_values, codes.device)[codes.long()]


def decode(codes, fmt, *, dtype=torch.float32):
    """Value of each code. Every value of these formats is exact in float32; NaN/invalid codes give NaN."""
    _check_format(fmt)
    _check_codes(codes, fmt)
    return _code_values_f64(codes, fmt).to(dtype)


def _nearest_even_magnitude(num, den, fmt):
    """RNE magnitude code of |num|/den (den > 0, both float64 and exact), saturating at the format's max.

    The float64 quotient picks a candidate; the exact comparisons |num| vs midpoint*den move it by at most
    one code, because the quotient's relative error (2**-53) is far below the midpoints' spacing.
    """
    mids = _on_device(fmt._midpoints, num.device)
    top = fmt.max_magnitude_code
    t = num.abs()
    code = torch.searchsorted(mids, (t / den).contiguous())
    odd = (code & 1) == 1
    upper_mid = mids[code.clamp(max=top - 1)] * den
    go_up = (code < top) & ((t > upper_mid) | ((t == upper_mid) & odd))
    lower_mid = mids[(code - 1).clamp(min=0)] * den
    go_down = (code > 0) & ((t < lower_mid) | ((t == lower_mid) & odd))
    return code + go_up.long() - go_down.long()


def encode_ratio(num, den, fmt):
    """Code of RNE(num / den) in ``fmt``, with num/den taken as an exact rational.

    ``num`` and ``den`` are float tensors (broadcastable); ``den`` must be positive and finite. Both are
    widened to float64 exactly. The midpoint*den products must be exact in float64: midpoints have at most
    5 significant bits, so den may have up to 48 (FP32 x UE4M3 products have 28; see numerics §2); num may
    be any float64.

    Special values (numerics §2): the result saturates at +-max (+-Inf included); NaN gives the canonical
    NaN code for formats that have one and raises ValueError for E2M1; a value that rounds to zero keeps its
    sign (-0 code) in signed formats; a negative non-zero value raises ValueError for unsigned formats.
    """
    _check_format(fmt)
    _check_values(num, "Numerator")
    _check_values(den, "Denominator")
    num = num.to(torch.float64)
    den = den.to(torch.float64)
    if den.numel() and not bool(((den > 0) & torch.isfinite(den)).all()):
        raise ValueError("Denominator must be positive and finite")
    num, den = torch.broadcast_tensors(num, den)
    nan = torch.isnan(num)
    if bool(nan.any()) and not fmt.has_nan:
        raise ValueError(f"{fmt} has no NaN encoding; the input contains NaN")
    negative = torch.signbit(num) & ~nan
    if not fmt.signed and bool((negative & (num != 0)).any()):
        raise ValueError(f"{fmt} is unsigned; the input contains negative values")
    code = _nearest_even_magnitude(torch.where(nan, 0.0, num), den, fmt)
    if fmt.signed:
        code = code | (negative.long() << fmt.magnitude_bits)
    if fmt.has_nan:
        code = torch.where(nan, fmt.nan_magnitude, code)
    return code.to(torch.uint8)


def encode(x, fmt):
    """Code of RNE(x) in ``fmt`` for any float tensor (exact for every dtype up to float64)."""
    _check_values(x)
    return encode_ratio(x, torch.ones((), dtype=torch.float64), fmt)


def decode_fields(codes, fmt):
    """The unpacked form the RTL decoders emit (numerics §7), as a dict of int64 tensors.

    value = (-1)**sign * significand * 2**(exponent - bias - mantissa_bits), with exponent = max(E, 1)
    and significand = M + (E != 0) * 2**mantissa_bits for exponent field E and mantissa field M.
    Keys: ``sign`` (signed formats), ``exponent``, ``significand``, ``zero``, ``nan`` (formats with NaN).
    NaN and invalid codes decode their low bits the same way; only the ``nan`` flag marks them.
    """
    _check_format(fmt)
    _check_codes(codes, fmt)
    codes = codes.long()
    magnitude = codes & ((1 << fmt.magnitude_bits) - 1)
    exponent_field = magnitude >> fmt.mantissa_bits
    mantissa_field = magnitude & ((1 << fmt.mantissa_bits) - 1)
    fields = {}
    if fmt.signed:
        fields["sign"] = (codes >> fmt.magnitude_bits) & 1
    fields["exponent"] = exponent_field.clamp(min=1)
    fields["significand"] = mantissa_field | ((exponent_field != 0).long() << fmt.mantissa_bits)
    fields["zero"] = (magnitude == 0).long()
    if fmt.has_nan:
        nan = magnitude == fmt.nan_magnitude
        if not fmt.signed:
            nan = nan | (codes >> fmt.magnitude_bits != 0)
        fields["nan"] = nan.long()
    return fields
