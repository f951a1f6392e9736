"""Small combinational building blocks shared by the units: leading-one detection, normalisation,
restoring division, squaring, and exact round-to-nearest-even of a ratio into a small float format
(docs/numerics.md §2)."""

from amaranth import Cat, Const, Mux, Signal, signed

from .formats import Format

__all__ = ["leading_one", "leading_one_chunks", "combine_leading_one", "normalize", "divide", "divide_steps", "small_product", "square", "square_partials", "round_ratio", "ratio_dividend",
           "ratio_base", "round_quotient", "quotient_exponent", "quotient_round", "quotient_code",
           "RATIO_QUOTIENT_BITS", "max_code"]


def leading_one(m, value, name):
    """Position of the most significant set bit of ``value`` (0 when ``value`` is 0).

    A tree of 2:1 multiplexers, log2(width) deep: a priority chain over the bits would put one
    multiplexer per bit on the path, and that chain was the FP32 conversion's critical path."""
    position = Signal(range(max(len(value), 2)), name=f"{name}_msb")
    m.d.comb += position.eq(_leading_one_tree(value)[1])
    return position


def leading_one_chunks(value, chunk):
    """The first level of a two-level ``leading_one``: [(bit offset, (any bit set, position))] of the
    aligned ``chunk``-bit pieces (a power of two) where the tree's own split points fall, for
    ``combine_leading_one`` to finish, possibly after a register."""
    if chunk < 1 or chunk & (chunk - 1):
        raise ValueError(f"Chunk must be a power of two, not {chunk}")
    return [(lo, _leading_one_tree(value[lo:min(lo + chunk, len(value))])) for lo in range(0, len(value), chunk)]


def combine_leading_one(width, chunks):
    """(any bit set, position of the highest set bit) of a ``width``-bit value from its chunks
    (``leading_one_chunks``, or the same pairs after a register): the upper levels of the same tree, so
    the result is the one ``leading_one`` gives."""
    by_offset = dict(chunks)
    chunk = min((b for b in by_offset if b), default=width)

    def tree(lo, hi):
        if lo in by_offset and hi - lo <= chunk:
            return by_offset[lo]
        half = 1 << (hi - lo - 1).bit_length() - 1
        low_any, low_position = tree(lo, lo + half)
        high_any, high_position = tree(lo + half, hi)
        bits = (half - 1).bit_length()
        return (high_any | low_any,
                Cat(Mux(high_any, high_position, low_position)[:bits] if bits else Const(0, 0), high_any))

    return tree(0, width)


def _leading_one_tree(value):
    """(any bit set, position of the highest set bit) of ``value``; the position is 0 for 0."""
    if len(value) == 1:
        return value[0], Const(0, 1)
    half = 1 << (len(value) - 1).bit_length() - 1  # the upper part holds the bits from the largest power of two
    low_any, low_position = _leading_one_tree(value[:half])
    if len(value) - half == 1:
        high_any, high_position = value[half], Const(0, 1)
    else:
        high_any, high_position = _leading_one_tree(value[half:])
    width = (half - 1).bit_length()
    return (high_any | low_any,
            Cat(Mux(high_any, high_position, low_position)[:width] if width else Const(0, 0), high_any))


def normalize(m, significand, exponent, name):
    """(significand shifted so its top bit is set, exponent lowered to match): same value, or 0."""
    width = len(significand)
    msb = leading_one(m, significand, name)
    shift = Signal(range(width), name=f"{name}_shift")
    m.d.comb += shift.eq(width - 1 - msb)
    normalized = Signal(width, name=f"{name}_sig")
    adjusted = Signal(signed(len(exponent) + 1), name=f"{name}_exp")
    m.d.comb += [normalized.eq(significand << shift), adjusted.eq(exponent - shift)]
    return normalized, adjusted


def max_code(fmt):
    """Largest finite magnitude code: the all-ones code is NaN in formats that have one."""
    return (1 << fmt.magnitude_bits) - (2 if fmt.has_nan else 1)


def divide(m, dividend, divisor, quotient_bits, name):
    """(quotient, remainder) of ``dividend // divisor`` by restoring division, for a ``dividend`` whose
    quotient fits ``quotient_bits`` (``dividend >> quotient_bits`` < ``divisor``, so ``divisor`` > 0).

    One compare-and-subtract of the divisor's width per quotient bit gives quotient and remainder
    together. Yosys maps ``//`` and ``%`` to two separate dividers, each as wide as the dividend at every
    step, and leaves ABC to merge the pair (docs/hardware.md, the activation unit)."""
    partial = Signal(len(divisor), name=f"{name}_r{quotient_bits}")
    m.d.comb += partial.eq(dividend >> quotient_bits)
    bits, partial = divide_steps(m, dividend, divisor, partial, range(quotient_bits), name)
    quotient = Signal(quotient_bits, name=f"{name}_q")
    m.d.comb += quotient.eq(Cat(*bits))
    return quotient, partial


def divide_steps(m, dividend, divisor, partial, positions, name):
    """The restoring steps of ``divide`` for the quotient bits at ``positions`` (a range), from the
    partial remainder left by the bits above them; returns (those quotient bits, LSB first, and the
    partial remainder). A pipeline can register the partial remainder between two calls, so one
    division spans several stages."""
    bits = []
    for position in reversed(positions):
        trial = Cat(dividend[position] if position < len(dividend) else Const(0, 1), partial)
        fits = Signal(name=f"{name}_q{position}")
        m.d.comb += fits.eq(trial >= divisor)
        partial = Signal(len(divisor), name=f"{name}_r{position}")
        m.d.comb += partial.eq(Mux(fits, trial - divisor, trial))
        bits.insert(0, fits)
    return bits, partial


def small_product(m, a, b, name):
    """``a * b`` as a balanced sum of ``b``'s partial products (``a`` shifted where ``b`` has a one).
    No multiply operator reaches Yosys, so the ECP5 flow does not put a 4 x 4 product in a MULT18X18D:
    the DSP columns are far from the logic around it, and the routing to and from them costs more than
    two carry chains (docs/hardware.md, the activation unit)."""
    terms = [Mux(b[k], a << k, 0) for k in range(len(b))]
    while len(terms) > 1:
        terms = [terms[k] + terms[k + 1] if k + 1 < len(terms) else terms[k] for k in range(0, len(terms), 2)]
    product = Signal(len(a) + len(b), name=name)
    m.d.comb += product.eq(terms[0])
    return product


def square(m, value, name):
    """``value * value`` from its distinct partial products: bit i alone at 2i, and each pair i < j once,
    doubled, at i + j + 1. A multiplier fed the same value twice adds every cross product twice; this
    sum has about half the partial products (a 4-bit f times a 12-bit square: 826 generic gates, against
    1,296 for (f * m) * m)."""
    result = Signal(2 * len(value), name=f"{name}_sq")
    m.d.comb += result.eq(sum(square_partials(m, value, 1, name)))
    return result


def square_partials(m, value, parts, name):
    """``square``'s partial products in ``parts`` sums of about equal size, whose total is ``value``
    squared: a pipeline can register them between the two halves of the sum."""
    width = len(value)
    terms = [value[i] << (2 * i) for i in range(width)]
    terms += [(value[i] & value[j]) << (i + j + 1) for i in range(width) for j in range(i + 1, width)]
    partials = []
    for k in range(parts):
        partial = Signal(2 * width, name=f"{name}_sq{k}" if parts > 1 else f"{name}_sq_sum")
        m.d.comb += partial.eq(sum(terms[k * len(terms) // parts:(k + 1) * len(terms) // parts]))
        partials.append(partial)
    return partials


# round_ratio's quotient: the numerator significand shifted up by _RATIO_EXTRA, over the 4-bit denominator
# significand, to RATIO_QUOTIENT_BITS bits.
_RATIO_EXTRA = 4  # Q = num_sig * 16 // den_sig is 136..510
RATIO_QUOTIENT_BITS = 9


def round_ratio(m, num_sig, num_exp, den_sig, den_exp, fmt, name):
    """Magnitude code of RNE_fmt(n / d), saturating, for n = num_sig * 2**num_exp (num_sig 8 bits with its
    top bit set, or 0) and d = den_sig * 2**den_exp (den_sig 4 bits, top bit set).

    The quotient is formed to 9 bits plus a remainder, which covers the at most 4 significant bits, the
    guard bit and the sticky bit every target format needs. Below the lowest guard position a format can
    have (7 - p, p its significand bits: the leading one is at 7 or 8) quotient bits only feed the sticky
    bit, so the restoring division stops there and its partial remainder stands for them: 4 steps for
    E2M1, 6 for the 4-bit formats. A zero numerator gives code 0. The parts (``ratio_dividend``,
    ``divide``/``divide_steps``, ``ratio_base``, ``round_quotient``) are public so that a pipeline can
    place registers between them.
    """
    _check_ratio_format(fmt)
    dividend = ratio_dividend(num_sig)
    sticky_only = 7 - fmt.significand_bits
    partial = Signal(len(den_sig), name=f"{name}_r{RATIO_QUOTIENT_BITS}")
    m.d.comb += partial.eq(dividend >> RATIO_QUOTIENT_BITS)
    bits, partial = divide_steps(m, dividend, den_sig, partial, range(sticky_only, RATIO_QUOTIENT_BITS), name)
    quotient = Signal(RATIO_QUOTIENT_BITS, name=f"{name}_q")
    inexact = Signal(name=f"{name}_inexact")  # the quotient bits below sticky_only or the remainder nonzero
    m.d.comb += [quotient.eq(Cat(Const(0, sticky_only), *bits)),
                 inexact.eq(partial.any() | dividend[:sticky_only].any())]
    base = ratio_base(m, num_exp, den_exp, fmt, name)
    zero = Signal(name=f"{name}_zero")
    m.d.comb += zero.eq(num_sig == 0)
    return round_quotient(m, quotient, inexact, base, zero, fmt, name)


def ratio_dividend(num_sig):
    return num_sig << _RATIO_EXTRA


def _check_ratio_format(fmt):
    if not isinstance(fmt, Format) or fmt.significand_bits > 4:
        raise ValueError(f"round_ratio handles formats of at most 4 significand bits, not {fmt!r}")


def _ratio_range(fmt):
    """The bases below which every code is the same (shift >= 11: all quotient bits below the guard bit)
    and above which every code saturates."""
    p = fmt.significand_bits
    emin = 1 - fmt.bias
    lowest = emin - p - 11
    highest = emin + (max_code(fmt) >> (p - 1)) + 1 - 7
    return lowest, highest, max(-lowest, highest + 9).bit_length() + 2


def ratio_base(m, num_exp, den_exp, fmt, name):
    """The exponent of round_ratio's quotient LSB, clamped to the few values that can change the code:
    exponent arithmetic of a few bits, not the operands' width; it does not wait for the quotient."""
    _check_ratio_format(fmt)
    lowest, highest, exp_width = _ratio_range(fmt)
    unclamped = Signal(signed(max(len(num_exp), len(den_exp)) + 2), name=f"{name}_base_full")
    m.d.comb += unclamped.eq(num_exp - den_exp - _RATIO_EXTRA)
    base = Signal(signed(exp_width), name=f"{name}_base")
    m.d.comb += base.eq(Mux(unclamped < lowest, lowest, Mux(unclamped > highest, highest, unclamped)))
    return base


def round_quotient(m, quotient, remainder, base, zero, fmt, name):
    """The code of (quotient + remainder / d) * 2**base rounded to ``fmt`` (RNE, saturating); ``zero``: the
    numerator was 0 (code 0). Three steps a pipeline can register between: ``quotient_exponent`` (from
    ``base`` and the quotient's top bit, the first a division yields), ``quotient_round`` and
    ``quotient_code``."""
    exponent = quotient_exponent(m, base, quotient[RATIO_QUOTIENT_BITS - 1], fmt, name)
    rounded = quotient_round(m, quotient, remainder, exponent, name)
    return quotient_code(m, rounded, zero, fmt, name)


def quotient_exponent(m, base, top_bit, fmt, name):
    """round_quotient's exponent work, which needs only ``base`` and the quotient's top bit: how far the
    quotient shifts right to leave the code's significand (``shift``), and the code's exponent field
    already in place (``exponent_code``, (target - emin) << (p - 1), target = max(leading exponent, emin)).

    The leading one of Q is at 7 + Q[8], so a normal result always shifts by 8 - p + Q[8], and a subnormal
    one by emin - (p - 1) - base: no subtraction of the two exponents is left for the rounding stage."""
    _check_ratio_format(fmt)
    p = fmt.significand_bits
    emin = 1 - fmt.bias
    _, _, exp_width = _ratio_range(fmt)
    leading = Signal(signed(exp_width), name=f"{name}_e")  # exponent of the leading one
    m.d.comb += leading.eq(base + 7 + top_bit)
    subnormal = Signal(name=f"{name}_subnormal")
    m.d.comb += subnormal.eq(leading < emin)
    subnormal_shift = Signal(signed(exp_width + 1), name=f"{name}_shift_raw")
    m.d.comb += subnormal_shift.eq(emin - (p - 1) - base)
    # Beyond 10 every quotient bit is below the guard bit: the result is the same as at 11.
    shift = Signal(range(12), name=f"{name}_shift")
    m.d.comb += shift.eq(Mux(subnormal, Mux(subnormal_shift > 11, 11, subnormal_shift), 8 - p + top_bit))
    exponent_code = Signal(exp_width + p, name=f"{name}_exponent_code")
    m.d.comb += exponent_code.eq(Mux(subnormal, 0, (leading - emin) << (p - 1)))
    return {"shift": shift, "exponent_code": exponent_code}


def quotient_round(m, quotient, remainder, exponent, name):
    """The quotient shifted right by ``exponent["shift"]`` and rounded to nearest even from its guard bit,
    the bits below and the division's remainder; ``exponent_code`` passes through. The guard bit and the
    sticky mask come from the quotient shifted up by one, so they need no ``shift - 1``."""
    shift = exponent["shift"]
    kept = Signal(9, name=f"{name}_kept")
    guard = Signal(name=f"{name}_guard")
    below = Signal(name=f"{name}_below")  # a quotient bit below the guard bit is set
    doubled = Cat(Const(0, 1), quotient)
    m.d.comb += [kept.eq(quotient >> shift), guard.eq((doubled >> shift)[0]),
                 below.eq((doubled & Cat(*(shift > j for j in range(len(doubled))))).any())]
    sticky = below | remainder.any()
    rounded = Signal(10, name=f"{name}_n")
    m.d.comb += rounded.eq(kept + (guard & (sticky | kept[0])))
    return {"rounded": rounded, "exponent_code": exponent["exponent_code"]}


def quotient_code(m, rounded, zero, fmt, name):
    """The magnitude code from ``quotient_round``'s result, saturating; ``zero``: code 0.

    code = (target - emin) << (p - 1) + n covers normal, subnormal, the carry into the next binade and a
    subnormal rounding up to the smallest normal alike."""
    _check_ratio_format(fmt)
    p = fmt.significand_bits
    _, _, exp_width = _ratio_range(fmt)
    code_wide = Signal(exp_width + p + 2, name=f"{name}_wide")
    m.d.comb += code_wide.eq(rounded["exponent_code"] + rounded["rounded"])
    code = Signal(fmt.magnitude_bits, name=f"{name}_code")
    with m.If(zero):
        m.d.comb += code.eq(0)
    with m.Elif(code_wide > max_code(fmt)):
        m.d.comb += code.eq(max_code(fmt))
    with m.Else():
        m.d.comb += code.eq(code_wide)
    return code
