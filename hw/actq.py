"""The mixed-precision activation quantization unit (docs/numerics.md §9): BF16 blocks in, NVFP4 or FP8
blocks out, one block per cycle, decided by a Fisher-weighted score against a threshold."""

from amaranth import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from .arith import leading_one, normalize, round_ratio, square
from .decoder import Decoder
from .dot import block_layout
from .formats import E2M1, E4M3, UE4M3
from .pipeline import StallPipeline, check_count, check_pipeline_stages

__all__ = ["MAX_PIPELINE_STAGES", "ActivationQuantizer", "check_parameters"]

# The deepest pipeline this unit places cuts for (docs/interfaces.md lists them in order).
MAX_PIPELINE_STAGES = 3
_BF16_BIAS_AND_MANTISSA = 127 + 7
_DELTA_BITS = 12
_WINDOW_BITS = 40
_SCORE_LSB = -45
_SCALE_448 = (14, 5)  # 448 = 14 * 2**5, as a normalised (4-bit significand, exponent) pair
_SCALE_6 = (12, -1)  # 6 = 12 * 2**-1
_UE4M3_448 = 0x7E
_E4M3_NAN = 0x7F


def check_parameters(*, block_size, max_channels, pipeline_stages):
    """The generator parameters' checks, shared with the engine; raises TypeError/ValueError."""
    check_count("Block size", block_size, 1)
    check_count("Maximum channels", max_channels, 1)
    if max_channels % block_size:
        raise ValueError(f"Maximum channels ({max_channels}) must be a multiple of the block size ({block_size})")
    check_pipeline_stages(pipeline_stages, MAX_PIPELINE_STAGES)


class ActivationQuantizer(wiring.Component):
    """Quantizes each block of ``block_size`` BF16 activations to the NVFP4 or FP8 block the dot unit
    consumes (numerics §9), one block per cycle.

    Parameters (keyword-only): ``block_size`` >= 1 (default 16); ``max_channels``, the longest reduction
    in elements (sets the sensitivity table depth, a multiple of ``block_size``; default 4096);
    ``pipeline_stages`` 0..3 (register cuts after the candidates, after the perturbations, after the
    score terms); ``passthrough``, an optional shape carried unchanged from ``i`` to ``o`` alongside
    its block (the engine sends the weight blocks this way).

    Ports:
    - ``i``: In stream of ``{values: BF16[B], first, last}``; ``first``/``last`` mark a reduction as for
      the dot unit, and the block's position in it indexes the sensitivity table.
    - ``o``: Out stream of ``{block, first, last}``, ``block`` in the dot unit's FGMP block layout.
    - ``config``: In ``{table_write, table_row, table_data: UE4M3[B], set_registers, scale_exponent
      (signed 8), threshold (FP32 bits), clear_counters}``: table rows (one per block position) and the
      registers are written on the cycles their strobe is high.
    - ``fp8_blocks``, ``nvfp4_blocks``: Out, 32-bit counts of emitted blocks (saturating).
    - ``table_overflow``: Out, sticky: a reduction ran past ``max_channels`` (its late blocks reused the
      last table row); cleared by ``clear_counters``.
    """

    def __init__(self, *, block_size=16, max_channels=4096, pipeline_stages=1, passthrough=None):
        check_parameters(block_size=block_size, max_channels=max_channels, pipeline_stages=pipeline_stages)
        self._block_size = block_size
        self._max_channels = max_channels
        self._pipeline_stages = pipeline_stages
        self._rows = max_channels // block_size
        # A one-row table would have a zero-width row address, which Verilog tools reject; the second
        # row is never read.
        self._table_depth = max(self._rows, 2)
        self._passthrough = passthrough
        block = block_layout(("nvfp4", "fp8"), block_size)
        in_fields = {"values": data.ArrayLayout(16, block_size), "first": 1, "last": 1}
        out_fields = {"block": block, "first": 1, "last": 1}
        if passthrough is not None:
            in_fields["passthrough"] = out_fields["passthrough"] = passthrough
        in_layout, out_layout = data.StructLayout(in_fields), data.StructLayout(out_fields)
        config_layout = data.StructLayout({
            "table_write": 1, "table_row": range(self._table_depth), "table_data": data.ArrayLayout(8, block_size),
            "set_registers": 1, "scale_exponent": signed(8), "threshold": 32, "clear_counters": 1,
        })
        super().__init__({
            "i": In(stream.Signature(in_layout)),
            "o": Out(stream.Signature(out_layout)),
            "config": In(config_layout),
            "fp8_blocks": Out(32),
            "nvfp4_blocks": Out(32),
            "table_overflow": Out(1),
        })

    @property
    def block_size(self):
        return self._block_size

    @property
    def max_channels(self):
        return self._max_channels

    @property
    def pipeline_stages(self):
        return self._pipeline_stages

    @property
    def passthrough(self):
        return self._passthrough

    @property
    def latency(self):
        """Cycles from the edge that takes a block to the earliest edge that can transfer its result."""
        return self._pipeline_stages + 1

    def _decode_scale(self, m, code, name):
        """A UE4M3 scale as (significand, exponent) normalised for round_ratio, its decoded form, and
        whether it is zero."""
        m.submodules[name] = decoder = Decoder(format=UE4M3)
        m.d.comb += decoder.code.eq(code)
        exponent = Signal(signed(6), name=f"{name}_e")
        m.d.comb += exponent.eq(decoder.decoded.exponent - (UE4M3.bias + UE4M3.mantissa_bits))
        significand, exponent = normalize(m, decoder.decoded.significand, exponent, f"{name}_n")
        return significand, exponent, decoder.decoded, decoder.decoded.zero

    def _scaled_magnitude(self, m, scale, fmt, code, width, lsb_shift, name):
        """|scale * element| as an integer of ``width`` bits, ``lsb_shift`` above the product of the two
        integers (scale at LSB 2**-9, E4M3 at LSB 2**-9, E2M1 at LSB 2**-1).

        The significands are multiplied (4 x 2 or 4 x 4 bits) and the product shifted by both exponents:
        multiplying the two integer values would build an 18 x 18-bit multiplier per element."""
        m.submodules[name] = decoder = Decoder(format=fmt)
        m.d.comb += decoder.code.eq(code)
        element = decoder.decoded
        product = Signal(len(scale.significand) + len(element.significand), name=f"{name}_sig")
        m.d.comb += product.eq(scale.significand * element.significand)
        magnitude = Signal(width, name=name)
        # Decoded exponents are >= 1 (subnormals share the smallest normal one): the shift is >= 0.
        m.d.comb += magnitude.eq(product << (scale.exponent + element.exponent + (lsb_shift - 2)).as_unsigned())
        return magnitude

    def elaborate(self, platform):
        m = Module()
        B = self._block_size
        pipeline = StallPipeline(m, self.i, self.o)
        enable, cut = pipeline.enable, pipeline.cut

        # Configuration registers and the sensitivity table (one row of B codes per block position).
        scale_exponent = Signal(signed(8))
        threshold = Signal(32)
        with m.If(self.config.set_registers):
            m.d.sync += [scale_exponent.eq(self.config.scale_exponent), threshold.eq(self.config.threshold)]
        m.submodules.table = table = memory.Memory(shape=data.ArrayLayout(8, B), depth=self._table_depth, init=[])
        write = table.write_port()
        m.d.comb += [write.addr.eq(self.config.table_row), write.data.eq(self.config.table_data),
                     write.en.eq(self.config.table_write)]
        read = table.read_port(domain="comb")

        # The block's position in its reduction (same rule as the dot unit: first, or after a last).
        in_reduction = Signal()
        position = Signal(range(self._rows + 2))  # saturates at rows + 1
        start = self.i.payload.first | ~in_reduction
        row = Signal(range(self._table_depth))
        m.d.comb += row.eq(Mux(start, 0, Mux(position >= self._rows, self._rows - 1, position)))
        m.d.comb += read.addr.eq(row)
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [in_reduction.eq(~self.i.payload.last),
                         position.eq(Mux(start, 1, Mux(position > self._rows, position, position + 1)))]
            with m.If(~start & (position >= self._rows)):
                m.d.sync += self.table_overflow.eq(1)

        # Stage 1: BF16 decode, x' = x * 2**-k as (significand, exponent), amax', both scales.
        elements = []
        for i in range(B):
            bits = self.i.payload.values[i]
            exponent_field, mantissa, sign = bits[7:15], bits[:7], bits[15]
            normal = exponent_field.any()
            significand = Signal(8, name=f"x{i}_sig")
            exponent = Signal(signed(11), name=f"x{i}_exp")
            m.d.comb += [significand.eq(Cat(mantissa, normal)),
                         exponent.eq(Mux(normal, exponent_field, 1) - _BF16_BIAS_AND_MANTISSA - scale_exponent)]
            nonfinite = exponent_field.all()
            nan = Signal(name=f"x{i}_nan")
            inf = Signal(name=f"x{i}_inf")
            m.d.comb += [nan.eq(nonfinite & mantissa.any()), inf.eq(nonfinite & ~mantissa.any())]
            elements.append((sign, significand, exponent, nan, inf))

        # amax' over finite elements: BF16 subnormals share the smallest normal exponent, so comparing
        # (exponent, significand) lexicographically orders magnitudes.
        candidates = []
        for i, (sign, significand, exponent, nan, inf) in enumerate(elements):
            finite_sig = Signal(8, name=f"x{i}_fsig")
            m.d.comb += finite_sig.eq(Mux(nan | inf, 0, significand))
            candidates.append((finite_sig, exponent))
        level = 0
        while len(candidates) > 1:
            paired = []
            for k in range(0, len(candidates) - 1, 2):
                (sa, ea), (sb, eb) = candidates[k], candidates[k + 1]
                a_larger = (sb == 0) | ((sa != 0) & ((ea > eb) | ((ea == eb) & (sa >= sb))))
                s = Signal(8, name=f"amax_l{level}_{k // 2}_sig")
                e = Signal(signed(11), name=f"amax_l{level}_{k // 2}_exp")
                m.d.comb += [s.eq(Mux(a_larger, sa, sb)), e.eq(Mux(a_larger, ea, eb))]
                paired.append((s, e))
            if len(candidates) % 2:
                paired.append(candidates[-1])
            candidates = paired
            level += 1
        amax_sig, amax_exp = normalize(m, candidates[0][0], candidates[0][1], "amax")
        s4 = round_ratio(m, amax_sig, amax_exp, Const(_SCALE_6[0], 4), Const(_SCALE_6[1], signed(3)), UE4M3, "s4")
        s8 = round_ratio(m, amax_sig, amax_exp, Const(_SCALE_448[0], 4), Const(_SCALE_448[1], signed(4)),
                         UE4M3, "s8")
        has_inf = Cat(e[4] for e in elements).any()
        forced = Signal()
        m.d.comb += forced.eq(Cat(e[3] | e[4] for e in elements).any())
        s8_used = Signal(8, name="s8_used")
        m.d.comb += s8_used.eq(Mux(has_inf, _UE4M3_448, s8))

        # T travels with its block, so a register write while blocks are in flight applies to later
        # blocks only, for k and T alike.
        passthrough = [threshold]
        if self._passthrough is not None:
            passthrough.append(self.i.payload.passthrough.as_value())
        stage1 = [s4, s8_used, forced, self.i.payload.first, self.i.payload.last, *passthrough]
        for i, (sign, significand, exponent, nan, inf) in enumerate(elements):
            norm_sig, norm_exp = normalize(m, Mux(nan | inf, 0, significand), exponent, f"x{i}_n")
            stage1 += [sign, norm_sig, norm_exp, nan, inf]
        f_codes = [Signal(8, name=f"f{i}") for i in range(B)]
        m.d.comb += [f.eq(read.data[i]) for i, f in enumerate(f_codes)]
        stage1 += f_codes
        valid, flat = cut(self.i.valid, stage1, self._pipeline_stages >= 1)
        (s4, s8_used, forced, first, last), passthrough = flat[:5], flat[5:5 + len(passthrough)]
        flat = flat[5 + len(passthrough):]
        per_element = flat[:5 * B]
        f_codes = flat[5 * B:]

        # Stage 2: both candidates per element, and |D| = |s4*q4 - s8*q8| * 2**18.
        s4_sig, s4_exp, s4_decoded, s4_zero = self._decode_scale(m, s4, "s4_dec")
        s8_sig, s8_exp, s8_decoded, s8_zero = self._decode_scale(m, s8_used, "s8_dec")
        q4_codes, q8_codes, deltas = [], [], []
        for i in range(B):
            sign, sig, exp, nan, inf = per_element[5 * i: 5 * i + 5]
            q4_mag = round_ratio(m, sig, exp, s4_sig, s4_exp, E2M1, f"q4_{i}")
            q8_mag = round_ratio(m, sig, exp, s8_sig, s8_exp, E4M3, f"q8_{i}")
            q4 = Signal(4, name=f"q4_{i}")
            q8 = Signal(8, name=f"q8_{i}")
            m.d.comb += [q4.eq(Mux(s4_zero, 0, Cat(q4_mag, sign))),
                         q8.eq(Mux(s8_zero, 0, Cat(q8_mag, sign)))]
            with m.If(inf):
                m.d.comb += q8.eq(Cat(Const(_UE4M3_448, 7), sign))
            with m.If(nan):
                m.d.comb += q8.eq(_E4M3_NAN)
            # Both at LSB 2**-18: s4 * q4 is at 2**-10 before the shift by 8, s8 * q8 at 2**-18. Only |D|
            # is scored, and q4 and q8 both carry the element's sign or are zero, so |D| is the distance
            # of the magnitudes (a NaN's q8 has no sign, but its block is forced to FP8, score unused).
            p4 = self._scaled_magnitude(m, s4_decoded, E2M1, q4, 31, 8, f"p4_{i}")
            p8 = self._scaled_magnitude(m, s8_decoded, E4M3, q8, 37, 0, f"p8_{i}")
            delta = Signal(37, name=f"d{i}")
            m.d.comb += delta.eq(Mux(p4 >= p8, p4 - p8, p8 - p4))
            q4_codes.append(q4)
            q8_codes.append(q8)
            deltas.append(delta)
        stage2 = [s4, s8_used, forced, first, last, *passthrough, *q4_codes, *q8_codes, *deltas, *f_codes]
        valid, flat = cut(valid, stage2, self._pipeline_stages >= 2)
        (s4, s8_used, forced, first, last), passthrough = flat[:5], flat[5:5 + len(passthrough)]
        flat = flat[len(passthrough):]
        q4_codes, q8_codes = flat[5:5 + B], flat[5 + B:5 + 2 * B]
        deltas, f_codes = flat[5 + 2 * B:5 + 3 * B], flat[5 + 3 * B:]

        # Stage 3: score terms F * Δ̂² as (mantissa, exponent) pairs.
        terms = []
        for i in range(B):
            magnitude = deltas[i]
            msb = leading_one(m, magnitude, f"dm{i}")
            shift = Signal(range(26), name=f"dm{i}_shift")
            m.d.comb += shift.eq(Mux(msb >= _DELTA_BITS, msb - (_DELTA_BITS - 1), 0))
            mantissa = Signal(_DELTA_BITS, name=f"dm{i}_m")
            m.d.comb += mantissa.eq(magnitude >> shift)
            m.submodules[f"f{i}_dec"] = f_dec = Decoder(format=UE4M3)
            m.d.comb += f_dec.code.eq(f_codes[i])
            term_mantissa = Signal(28, name=f"tm{i}")
            term_exponent = Signal(range(2 * 25 + 16), name=f"te{i}")
            m.d.comb += [term_mantissa.eq(f_dec.decoded.significand * square(m, mantissa, f"dm{i}")),
                         term_exponent.eq(2 * shift + f_dec.decoded.exponent - 1)]
            terms += [term_mantissa, term_exponent]
        stage3 = [s4, s8_used, forced, first, last, *passthrough, *q4_codes, *q8_codes, *terms]
        valid, flat = cut(valid, stage3, self._pipeline_stages >= 3)
        (s4, s8_used, forced, first, last), passthrough = flat[:5], flat[5:5 + len(passthrough)]
        flat = flat[len(passthrough):]
        q4_codes, q8_codes, terms = flat[5:5 + B], flat[5 + B:5 + 2 * B], flat[5 + 2 * B:]

        # Final stage: window the terms below the largest one, sum, compare with T, choose, count.
        threshold, passthrough = passthrough[0], passthrough[1:]
        leading = []
        for i in range(B):
            tm, te = terms[2 * i], terms[2 * i + 1]
            position = Signal(range(2 * 25 + 16 + 28), name=f"tl{i}")
            m.d.comb += position.eq(Mux(tm == 0, 0, leading_one(m, tm, f"tm{i}") + te))
            leading.append(position)
        top = leading[0]
        for k, position in enumerate(leading[1:]):
            larger = Signal.like(top, name=f"top{k}")
            m.d.comb += larger.eq(Mux(position > top, position, top))
            top = larger
        units = []
        for i in range(B):
            tm, te = terms[2 * i], terms[2 * i + 1]
            distance = Signal(range(2 * 25 + 16 + 28 + 1), name=f"ta{i}")  # E - te
            m.d.comb += distance.eq(top - te)
            unit = Signal(_WINDOW_BITS + 1, name=f"tu{i}")
            m.d.comb += unit.eq((tm << _WINDOW_BITS) >> distance)
            units.append(unit)
        total = Signal(_WINDOW_BITS + 1 + (B - 1).bit_length(), name="score_units")
        m.d.comb += total.eq(sum(units))

        # score = total * 2**(E - 85) against T = t_sig * 2**t_exp (FP32), exactly.
        t_field, t_mantissa = threshold[23:31], threshold[:23]
        t_sig = Signal(24, name="t_sig")
        m.d.comb += t_sig.eq(Cat(t_mantissa, t_field.any()))
        t_inf = t_field.all()
        total_msb = leading_one(m, total, "score")
        t_msb = leading_one(m, t_sig, "t")
        score_position = Signal(signed(10), name="score_position")
        t_position = Signal(signed(10), name="t_position")
        m.d.comb += [score_position.eq(total_msb + top + (_SCORE_LSB - _WINDOW_BITS)),
                     t_position.eq(t_msb + Mux(t_field.any(), t_field, 1) - 150)]
        score_aligned = Signal(48, name="score_aligned")
        t_aligned = Signal(48, name="t_aligned")
        score_shift = Signal(range(48), name="score_shift")
        t_shift = Signal(range(48), name="t_shift")
        m.d.comb += [score_shift.eq(47 - total_msb), t_shift.eq(47 - t_msb),
                     score_aligned.eq(total << score_shift), t_aligned.eq(t_sig << t_shift)]
        greater = Signal(name="score_above_threshold")
        with m.If((total == 0) | t_inf):
            m.d.comb += greater.eq(0)
        with m.Elif(t_sig == 0):
            m.d.comb += greater.eq(1)
        with m.Elif(score_position != t_position):
            m.d.comb += greater.eq(score_position > t_position)
        with m.Else():
            m.d.comb += greater.eq(score_aligned > t_aligned)
        fp8 = Signal(name="choose_fp8")
        m.d.comb += fp8.eq(forced | greater)

        with m.If(enable):
            m.d.sync += [self.o.valid.eq(valid), self.o.payload.first.eq(first), self.o.payload.last.eq(last),
                         self.o.payload.block.fp8.eq(fp8), self.o.payload.block.scale.eq(Mux(fp8, s8_used, s4))]
            for i in range(B):
                m.d.sync += self.o.payload.block.codes[i].eq(Mux(fp8, q8_codes[i], q4_codes[i]))
            if passthrough:
                m.d.sync += self.o.payload.passthrough.eq(passthrough[0])
        with m.If(self.o.valid & self.o.ready):
            with m.If(self.o.payload.block.fp8):
                m.d.sync += self.fp8_blocks.eq(self.fp8_blocks + (self.fp8_blocks != 0xFFFFFFFF))
            with m.Else():
                m.d.sync += self.nvfp4_blocks.eq(self.nvfp4_blocks + (self.nvfp4_blocks != 0xFFFFFFFF))
        with m.If(self.config.clear_counters):
            m.d.sync += [self.fp8_blocks.eq(0), self.nvfp4_blocks.eq(0), self.table_overflow.eq(0)]
        return m
