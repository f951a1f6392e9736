"""hw/arith.round_ratio (exact RNE of a ratio of significands into E2M1/E4M3/UE4M3, numerics §2) against
the golden codec: every numerator significand (and 0) against every normalised denominator significand,
over exponent differences spanning underflow, subnormals, normals and saturation. The building blocks
(leading-one detection, restoring division, small products, squaring) against Python integers, exhaustively."""

import random

import pytest
import torch
from amaranth import Cat, Module, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from fgmp import golden
from fgmp.hw.arith import (combine_leading_one, divide, leading_one, leading_one_chunks, max_code, round_ratio,
                           small_product, square, square_partials)
from fgmp.hw.formats import E2M1, E4M3, UE4M3


class _RoundRatio(wiring.Component):
    def __init__(self, fmt):
        self._fmt = fmt
        super().__init__({"num_sig": In(8), "num_exp": In(signed(12)), "den_sig": In(4), "den_exp": In(signed(8)),
                          "code": Out(fmt.magnitude_bits)})

    def elaborate(self, platform):
        m = Module()
        m.d.comb += self.code.eq(round_ratio(m, self.num_sig, self.num_exp, self.den_sig, self.den_exp,
                                             self._fmt, "rr"))
        return m


@pytest.mark.parametrize("hw_format,golden_format,exponents", [
    (E2M1, golden.E2M1, [*range(-14, 4), -300, 250]),
    (E4M3, golden.E4M3, [*range(-26, 6), -300, 250]),
    (UE4M3, golden.UE4M3, [*range(-26, 6), -300, 250]),
])
def test_round_ratio_is_exact_rne(hw_format, golden_format, exponents):
    dut = _RoundRatio(hw_format)
    cases = [(n, e, d, 0) for e in exponents for n in [0, *range(128, 256)] for d in range(8, 16)]
    got = []

    async def testbench(ctx):
        for num_sig, num_exp, den_sig, den_exp in cases:
            ctx.set(dut.num_sig, num_sig)
            ctx.set(dut.num_exp, num_exp)
            ctx.set(dut.den_sig, den_sig)
            ctx.set(dut.den_exp, den_exp)
            got.append(ctx.get(dut.code))

    sim = Simulator(dut)
    sim.add_testbench(testbench)
    sim.run()
    num = torch.tensor([n * 2.0**e for n, e, _, _ in cases], dtype=torch.float64)
    den = torch.tensor([float(d) for _, _, d, _ in cases], dtype=torch.float64)
    assert got == golden.encode_ratio(num, den, golden_format).tolist()
    assert set(got) == set(range(max_code(hw_format) + 1))  # every code, zero to saturation, occurs


class _LeadingOne(wiring.Component):
    def __init__(self, width):
        super().__init__({"value": In(width), "position": Out(range(max(width, 2)))})

    def elaborate(self, platform):
        m = Module()
        m.d.comb += self.position.eq(leading_one(m, self.value, "lo"))
        return m


@pytest.mark.parametrize("width", [1, 2, 3, 5, 8, 9, 87])
def test_leading_one_is_the_highest_set_bit(width):
    dut = _LeadingOne(width)
    generator = random.Random(width)
    if width <= 9:
        values = list(range(1 << width))
    else:  # every position, alone and under random lower bits, and the all-ones and zero words
        values = [0, (1 << width) - 1] + [(1 << b) | (generator.getrandbits(b) if b else 0)
                                          for b in range(width) for _ in range(3)]
    got = []

    async def testbench(ctx):
        for value in values:
            ctx.set(dut.value, value)
            got.append(ctx.get(dut.position))

    sim = Simulator(dut)
    sim.add_testbench(testbench)
    sim.run()
    assert got == [max(value.bit_length() - 1, 0) for value in values]


class _LeadingOneInChunks(wiring.Component):
    """The two-level detector, its chunks registered as the dot unit's ``convert_lod_chunks`` cut does."""

    def __init__(self, width, chunk):
        self._width, self._chunk = width, chunk
        super().__init__({"value": In(width), "found": Out(1), "position": Out(range(max(width, 2)))})

    def elaborate(self, platform):
        m = Module()
        registered = {}
        for offset, (found, position) in leading_one_chunks(self.value, self._chunk):
            registered[offset] = (Signal(name=f"found{offset}"), Signal(len(position), name=f"position{offset}"))
            m.d.sync += [registered[offset][0].eq(found), registered[offset][1].eq(position)]
        found, position = combine_leading_one(self._width, registered.items())
        m.d.comb += [self.found.eq(found), self.position.eq(position)]
        return m


@pytest.mark.parametrize("width,chunk", [(1, 16), (9, 4), (17, 16), (23, 16), (87, 16), (87, 1), (87, 64)])
def test_leading_one_in_chunks_is_the_one_level_result_a_cycle_later(width, chunk):
    dut = _LeadingOneInChunks(width, chunk)
    generator = random.Random(width * chunk)
    values = [0, (1 << width) - 1] + [(1 << b) | (generator.getrandbits(b) if b else 0)
                                      for b in range(width) for _ in range(2)]
    got = []

    async def testbench(ctx):
        for value in values:
            ctx.set(dut.value, value)
            await ctx.tick()
            got.append((ctx.get(dut.found), ctx.get(dut.position)))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.run()
    assert got == [(int(value != 0), max(value.bit_length() - 1, 0)) for value in values]


def test_leading_one_chunks_must_be_a_power_of_two():
    with pytest.raises(ValueError, match="Chunk must be a power of two, not 12"):
        leading_one_chunks(Signal(87), 12)


def _evaluate(dut, inputs, output):
    """``output`` of a combinational ``dut`` for each dict of port values in ``inputs``."""
    got = []

    async def testbench(ctx):
        for values in inputs:
            for port, value in values.items():
                ctx.set(getattr(dut, port), value)
            got.append(ctx.get(getattr(dut, output)))

    sim = Simulator(dut)
    sim.add_testbench(testbench)
    sim.run()
    return got


class _Divide(wiring.Component):
    def __init__(self):
        super().__init__({"dividend": In(12), "divisor": In(4), "quotient_remainder": Out(13)})

    def elaborate(self, platform):
        m = Module()
        quotient, remainder = divide(m, self.dividend, self.divisor, 9, "div")
        m.d.comb += self.quotient_remainder.eq(Cat(remainder, quotient))
        return m


def test_divide_gives_quotient_and_remainder_of_every_dividend_whose_quotient_fits():
    cases = [(n, d) for d in range(1, 16) for n in range(min(d << 9, 1 << 12))]
    got = _evaluate(_Divide(), [{"dividend": n, "divisor": d} for n, d in cases], "quotient_remainder")
    assert [(value >> 4, value & 15) for value in got] == [divmod(n, d) for n, d in cases]


class _Square(wiring.Component):
    def __init__(self, width):
        super().__init__({"value": In(width), "result": Out(2 * width)})

    def elaborate(self, platform):
        m = Module()
        m.d.comb += self.result.eq(square(m, self.value, "sq"))
        return m


@pytest.mark.parametrize("width", [1, 2, 5, 12])
def test_square_of_every_value(width):
    values = range(1 << width)
    assert _evaluate(_Square(width), [{"value": v} for v in values], "result") == [v * v for v in values]


class _SquarePartials(wiring.Component):
    def __init__(self, width, parts):
        self._parts = parts
        super().__init__({"value": In(width), "partials": Out(2 * width * parts)})

    def elaborate(self, platform):
        m = Module()
        m.d.comb += self.partials.eq(Cat(square_partials(m, self.value, self._parts, "sq")))
        return m


@pytest.mark.parametrize("width,parts", [(5, 2), (5, 3), (12, 4)])
def test_square_partials_add_up_to_the_square_of_every_value(width, parts):
    """What the activation unit's ``square_mid`` cut registers: each partial sum within its width (none
    wraps) and their total the square."""
    values = range(1 << width)
    got = _evaluate(_SquarePartials(width, parts), [{"value": v} for v in values], "partials")
    mask = (1 << 2 * width) - 1
    split = [[(word >> (2 * width * k)) & mask for k in range(parts)] for word in got]
    assert [sum(partials) for partials in split] == [v * v for v in values]
    assert all(split[-1])  # all ones: every partial product is set, so every part carries some


class _SmallProduct(wiring.Component):
    def __init__(self, a_width, b_width):
        super().__init__({"a": In(a_width), "b": In(b_width), "result": Out(a_width + b_width)})

    def elaborate(self, platform):
        m = Module()
        m.d.comb += self.result.eq(small_product(m, self.a, self.b, "p"))
        return m


@pytest.mark.parametrize("a_width,b_width", [(4, 2), (4, 4), (3, 5)])
def test_small_product_of_every_pair(a_width, b_width):
    pairs = [(a, b) for a in range(1 << a_width) for b in range(1 << b_width)]
    result = _evaluate(_SmallProduct(a_width, b_width), [{"a": a, "b": b} for a, b in pairs], "result")
    assert result == [a * b for a, b in pairs]
