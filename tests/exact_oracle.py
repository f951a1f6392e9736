"""An independent exact oracle for the numerics contract (docs/numerics.md), in pure Python.

Everything here works on ``fractions.Fraction`` and integers only: no torch, no lookup tables shared with
``fgmp.golden``, no midpoint lists. Rounding is done once, on the exact rational, with integer division.

Conventions
-----------
* A *format* is a :class:`Fmt` (precision incl. hidden bit, minimum normal exponent, max finite value,
  signed or not, NaN code or None). ``E2M1``, ``E4M3``, ``UE4M3`` and ``FP32`` are defined below.
* Encodes return ``(magnitude: Fraction, sign: int)``; the sign is tracked separately so that -0 is visible.
  NaN results are the string ``"nan"``.
* ``value_to_code`` / ``code_to_value`` map between values and bit patterns from the field definitions
  (sign, exponent with bias, mantissa, subnormals at exponent field 0).
"""

import math
import struct
from functools import lru_cache
from dataclasses import dataclass
from fractions import Fraction

__all__ = [
    "Fmt",
    "E2M1",
    "E4M3",
    "UE4M3",
    "FP32",
    "NAN",
    "floor_log2",
    "round_to_binary",
    "grid",
    "midpoints",
    "encode_value",
    "encode_float",
    "value_to_code",
    "code_to_value",
    "encode_code",
    "fl32",
    "oracle_global_scale",
    "oracle_quantize_block",
    "oracle_dequantize_block",
    "to_fraction",
    "sign_of",
    "oracle_dot",
    "CANONICAL_FP32_NAN",
]

NAN = "nan"


@dataclass(frozen=True)
class Fmt:
    name: str
    precision: int  # significant bits including the hidden bit
    emin: int  # exponent of the smallest normal value
    exponent_bits: int
    bias: int
    max_value: Fraction
    signed: bool
    nan_code: int | None  # canonical NaN code, None when the format has no NaN
    code_bits: int

    @property
    def mantissa_bits(self):
        return self.precision - 1

    @property
    def magnitude_bits(self):
        return self.exponent_bits + self.mantissa_bits


E2M1 = Fmt("e2m1", 2, 0, 2, 1, Fraction(6), True, None, 4)
E4M3 = Fmt("e4m3", 4, -6, 4, 7, Fraction(448), True, 0x7F, 8)
UE4M3 = Fmt("ue4m3", 4, -6, 4, 7, Fraction(448), False, 0x7F, 8)
# FP32 is only used through round_to_binary (fl32), never as an encode target with codes.
FP32 = Fmt("fp32", 24, -126, 8, 127, Fraction((1 << 24) - 1, 1) * Fraction(2) ** (127 - 23), True, None, 32)


def to_fraction(x):
    """Exact rational of a Python float / int / Fraction (floats must be finite)."""
    if isinstance(x, Fraction):
        return x
    return Fraction(x)


def sign_of(x):
    """Sign bit of a float (IEEE signbit, -0.0 -> 1) or of a Fraction (< 0 -> 1)."""
    if isinstance(x, float):
        return 1 if math.copysign(1.0, x) < 0 else 0
    return 1 if x < 0 else 0


def floor_log2(a):
    """floor(log2(a)) for a positive Fraction, exactly."""
    return _floor_log2_pq(a.numerator, a.denominator)


def _floor_log2_pq(p, q):
    assert p > 0 and q > 0
    e = p.bit_length() - q.bit_length()
    # Now 2**(e-1) < p/q < 2**(e+1); decide between e-1 and e.
    if e >= 0:
        if p < (q << e):
            e -= 1
    else:
        if (p << -e) < q:
            e -= 1
    return e


@lru_cache(maxsize=4096)
def _pow2(k):
    return Fraction(1 << k) if k >= 0 else Fraction(1, 1 << -k)


def round_to_binary(v, precision, emin):
    """RNE of |v| onto the binary grid with ``precision`` significant bits (hidden bit included) and
    smallest normal exponent ``emin``; subnormals (fixed quantum 2**(emin - precision + 1)) below 2**emin;
    unbounded above. Returns a non-negative Fraction."""
    p, q = v.as_integer_ratio()  # exact for int, float and Fraction
    p = abs(p)
    if p == 0:
        return Fraction(0)
    e = max(_floor_log2_pq(p, q), emin)
    k = e - precision + 1  # exponent of the quantum (ulp) at |v|
    if k >= 0:
        num, den = p, q << k
    else:
        num, den = p << -k, q
    n, r = divmod(num, den)
    if 2 * r > den or (2 * r == den and n & 1):
        n += 1
    return Fraction(n << k) if k >= 0 else Fraction(n, 1 << -k)


def fl32(v):
    """Signed RNE of an exact rational to FP32 (no overflow handling: callers stay in range)."""
    v = to_fraction(v)
    r = round_to_binary(v, FP32.precision, FP32.emin)
    assert r <= FP32.max_value, "fl32 overflow is outside what the oracle needs"
    return -r if v < 0 else r


@lru_cache(maxsize=None)
def grid(fmt):
    """All finite non-negative values of ``fmt``, ascending (built from the exponent/mantissa definition),
    as a tuple."""
    values = []
    m = fmt.mantissa_bits
    for e_field in range(1 << fmt.exponent_bits):
        for m_field in range(1 << m):
            if fmt.nan_code is not None and (e_field << m | m_field) == fmt.nan_code:
                continue
            values.append(_field_value(e_field, m_field, fmt))
    return tuple(sorted(values))


@lru_cache(maxsize=None)
def midpoints(fmt):
    """Midpoints between consecutive grid values, as a tuple."""
    g = grid(fmt)
    return tuple((a + b) / 2 for a, b in zip(g, g[1:]))


def _field_value(e_field, m_field, fmt):
    m = fmt.mantissa_bits
    significand = m_field + ((1 << m) if e_field else 0)
    return Fraction(significand) * _pow2(max(e_field, 1) - fmt.bias - m)


def encode_value(v, negative, fmt):
    """Saturating RNE of the exact rational ``v`` in ``fmt``: returns (magnitude, sign).

    ``negative`` is the sign of the input (so -0.0 and negative values that round to zero keep sign 1 in
    signed formats). Unsigned formats raise ValueError for a negative non-zero value and give sign 0.
    ``v`` may be ``math.inf`` (saturates); NaN is handled by :func:`encode_float`.
    """
    if isinstance(v, float) and math.isinf(v):
        magnitude = fmt.max_value
        nonzero = True
    else:
        v = to_fraction(v)
        nonzero = v != 0
        magnitude = min(round_to_binary(v, fmt.precision, fmt.emin), fmt.max_value)
    if not fmt.signed:
        if negative and nonzero:
            raise ValueError(f"{fmt.name} is unsigned")
        return magnitude, 0
    return magnitude, 1 if negative else 0


def encode_float(x, fmt):
    """Encode a Python float per the contract: (magnitude, sign) or NAN; E2M1 NaN raises ValueError."""
    if math.isnan(x):
        if fmt.nan_code is None:
            raise ValueError(f"{fmt.name} has no NaN")
        return NAN
    return encode_value(abs(x) if math.isinf(x) else Fraction(x), sign_of(x) == 1, fmt)


def value_to_code(magnitude, sign, fmt):
    """Bit pattern of a representable (magnitude, sign) pair, from the field definitions."""
    if magnitude == NAN:
        return fmt.nan_code
    m = fmt.mantissa_bits
    if magnitude == 0:
        bits = 0
    else:
        e = floor_log2(magnitude)
        if e < fmt.emin:  # subnormal
            e_field = 0
            significand = magnitude / _pow2(fmt.emin - m)
        else:
            e_field = e + fmt.bias
            significand = magnitude / _pow2(e - m) - (1 << m)
        assert significand.denominator == 1, f"{magnitude} is not on the {fmt.name} grid"
        assert 0 < e_field < (1 << fmt.exponent_bits) or (e_field == 0), magnitude
        bits = (e_field << m) | int(significand)
        assert fmt.nan_code is None or bits != fmt.nan_code, "value collides with the NaN code"
    if fmt.signed and sign:
        bits |= 1 << fmt.magnitude_bits
    return bits


def code_to_value(code, fmt):
    """(magnitude, sign) of a code, or NAN for NaN codes and invalid (top-bit-set unsigned) codes."""
    code = int(code)
    assert 0 <= code < (1 << fmt.code_bits)
    sign = (code >> fmt.magnitude_bits) & 1
    if not fmt.signed and sign:
        return NAN
    magnitude_code = code & ((1 << fmt.magnitude_bits) - 1)
    if fmt.nan_code is not None and magnitude_code == fmt.nan_code:
        return NAN
    m = fmt.mantissa_bits
    return _field_value(magnitude_code >> m, magnitude_code & ((1 << m) - 1), fmt), sign


def encode_code(x, fmt):
    """Code of a Python float per the contract."""
    r = encode_float(x, fmt)
    if r == NAN:
        return fmt.nan_code
    return value_to_code(r[0], r[1], fmt)


# ---------------------------------------------------------------------------------------------- blocks

NVFP4_DENOMINATOR = 2688  # 6 * 448
SMALLEST_FP32 = Fraction(1, 1 << 149)


def oracle_global_scale(values):
    """G = fl32(amax / 2688) of an iterable of finite floats/Fractions; 1 if all zero; >= 2**-149."""
    amax = max((abs(to_fraction(v)) for v in values), default=Fraction(0))
    if amax == 0:
        return Fraction(1)
    g = round_to_binary(amax / NVFP4_DENOMINATOR, FP32.precision, FP32.emin)
    return max(g, SMALLEST_FP32)


def oracle_quantize_block(values, fp8, G):
    """One block per the contract. ``values``: floats (or Fractions, sign taken from < 0); ``G``: Fraction.

    Returns (scale value, element values, element sign bits): the scale as a Fraction, each element as a
    signed Fraction (its decoded value, -0 shows up only in the sign bits), sign bits as 0/1 ints.
    """
    G = to_fraction(G)
    element_fmt = E4M3 if fp8 else E2M1
    amax = max(abs(to_fraction(v)) for v in values)
    s, _ = encode_value(amax / (element_fmt.max_value * G), False, UE4M3)
    if s == 0:
        return s, [Fraction(0)] * len(values), [0] * len(values)
    den = G * s
    elements, signs = [], []
    for v in values:
        f = to_fraction(v)
        negative = sign_of(v) == 1
        magnitude, sign = encode_value(f / den, negative, element_fmt)
        elements.append(-magnitude if sign else magnitude)
        signs.append(sign)
    return s, elements, signs


def oracle_dequantize_block(G, s, elements, signs):
    """fl32(G * s * e) for each element, as (Fraction value, sign bit) pairs (sign of zero preserved)."""
    out = []
    for e, sign in zip(elements, signs):
        out.append((fl32(to_fraction(G) * s * e), sign))
    return out


CANONICAL_FP32_NAN = 0x7FC00000


def _signed_value(code, fmt):
    decoded = code_to_value(code, fmt)
    if decoded == NAN:
        return NAN
    magnitude, sign = decoded
    return -magnitude if sign else magnitude


def oracle_dot(weight_blocks, activation_blocks):
    """FP32 bit pattern of one lane of the dot unit (numerics §8): RNE_FP32 of the exact sum over block
    pairs of s_w * s_x * sum_i dec(w_i) * dec(x_i); canonical NaN if anything is NaN; +0 for zero.

    Each block is (element codes, scale code, fp8: bool); NVFP4 blocks read the low nibble of each code.
    """
    total = Fraction(0)
    for (w_codes, w_scale, w_fp8), (x_codes, x_scale, x_fp8) in zip(weight_blocks, activation_blocks, strict=True):
        scales = [_signed_value(w_scale, UE4M3), _signed_value(x_scale, UE4M3)]
        w = [_signed_value(c, E4M3) if w_fp8 else _signed_value(c & 0xF, E2M1) for c in w_codes]
        x = [_signed_value(c, E4M3) if x_fp8 else _signed_value(c & 0xF, E2M1) for c in x_codes]
        if NAN in scales or NAN in w or NAN in x:
            return CANONICAL_FP32_NAN
        total += scales[0] * scales[1] * sum(a * b for a, b in zip(w, x, strict=True))
    if total == 0:
        return 0
    rounded = fl32(total)
    return int.from_bytes(struct.pack(">f", float(rounded)), "big")
