"""The FGMP dot-product unit (docs/numerics.md §8): L lanes, exact accumulation, one block pair per cycle."""

from amaranth import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .arith import leading_one
from .decoder import Decoder
from .formats import E2M1, E4M3, UE4M3
from .pipeline import StallPipeline, check_count, check_pipeline_stages

__all__ = ["DotUnit", "FORMATS", "block_layout"]

FORMATS = ("nvfp4", "fp8")
_CANONICAL_NAN = 0x7FC00000
# E2M1 joins the E4M3 datapath exactly: same significand, exponent + 8 (bias 1 / 1 mantissa bit vs 7 / 3).
_E2M1_TO_E4M3_EXPONENT = (E4M3.bias + E4M3.mantissa_bits) - (E2M1.bias + E2M1.mantissa_bits)


def _check_formats(formats):
    if not isinstance(formats, tuple) or not all(isinstance(f, str) for f in formats):
        raise TypeError(f"Formats must be a tuple of format names, not {formats!r}")
    if not formats:
        raise ValueError("Formats must name at least one of 'nvfp4', 'fp8'")
    for name in formats:
        if name not in FORMATS:
            raise ValueError(f"Unknown format {name!r}; choose from 'nvfp4', 'fp8'")
    if len(set(formats)) != len(formats):
        raise ValueError(f"Formats must not repeat, not {formats!r}")


def block_layout(formats, block_size):
    """One block as the unit consumes it: codes (one per element), UE4M3 scale, precision bit (FP8 = 1)
    when both formats are enabled. NVFP4 codes sit in the low nibble of 8-bit code slots in a FGMP unit."""
    code_bits = 4 if formats == ("nvfp4",) else 8
    fields = {"codes": data.ArrayLayout(code_bits, block_size), "scale": 8}
    if len(formats) == 2:
        fields["fp8"] = 1
    return data.StructLayout(fields)


def _ceil_log2(n):
    return max(n - 1, 0).bit_length()


class DotUnit(wiring.Component):
    """One activation block broadcast to ``lanes`` weight blocks; each lane accumulates exactly over a
    reduction and emits RNE_FP32 of the sum (numerics §8).

    Parameters (keyword-only): ``lanes`` >= 1; ``block_size`` >= 1 (default 16); ``max_blocks``, the
    longest reduction in blocks that stays exact (sets the accumulator width; longer ones raise the
    ``overflow`` flag); ``pipeline_stages`` in 0..3, extra register cuts (after the adder tree, after the
    element products, after the scale multiply, in that order); ``formats``, a tuple of 'nvfp4' and/or
    'fp8' (FGMP, FP8-only or FP4-only units).

    Ports: ``i`` (In stream of ``{activation, weights[lanes], first, last}``), ``o`` (Out stream of
    ``{results[lanes] (FP32 bits), overflow}``, one transfer per reduction). A block with ``first`` set,
    or the first block after a ``last``, starts a reduction; ``last`` ends it. Every cycle that ``o`` is not stalled, ``i`` is ready.
    """

    def __init__(self, *, lanes, block_size=16, max_blocks=1024, pipeline_stages=1, formats=FORMATS):
        check_count("Lanes", lanes, 1)
        check_count("Block size", block_size, 1)
        check_count("Maximum blocks", max_blocks, 1)
        check_pipeline_stages(pipeline_stages)
        _check_formats(formats)
        self._lanes = lanes
        self._block_size = block_size
        self._max_blocks = max_blocks
        self._pipeline_stages = pipeline_stages
        self._formats = tuple(f for f in FORMATS if f in formats)
        # The largest magnitude, 2**(width - 1) units, may round up one binade: its exponent must stay <= 127.
        if self.accumulator_width + self.accumulator_lsb_exponent > 127:
            raise ValueError(f"A reduction of {max_blocks} blocks of {block_size} elements can exceed the FP32 "
                             f"range; reduce the maximum blocks or the block size")
        block = block_layout(self._formats, block_size)
        self._in_layout = data.StructLayout({
            "activation": block, "weights": data.ArrayLayout(block, lanes), "first": 1, "last": 1})
        self._out_layout = data.StructLayout({"results": data.ArrayLayout(32, lanes), "overflow": 1})
        super().__init__({
            "i": In(stream.Signature(self._in_layout)),
            "o": Out(stream.Signature(self._out_layout)),
        })

    @property
    def lanes(self):
        return self._lanes

    @property
    def block_size(self):
        return self._block_size

    @property
    def max_blocks(self):
        return self._max_blocks

    @property
    def pipeline_stages(self):
        return self._pipeline_stages

    @property
    def formats(self):
        return self._formats

    @property
    def _element_format(self):
        """The unpacked form the multipliers see: E4M3's whenever FP8 is enabled, else E2M1's."""
        return E4M3 if "fp8" in self._formats else E2M1

    @property
    def product_bits(self):
        fmt = self._element_format
        max_exponent = (1 << fmt.exponent_bits) - 1
        return 2 * fmt.significand_bits + 2 * max_exponent - 2

    @property
    def block_sum_bits(self):
        return self.product_bits + _ceil_log2(self._block_size)

    @property
    def product_lsb_exponent(self):
        """Element products are integers at this power of two (-18 with FP8, -2 for FP4-only)."""
        fmt = self._element_format
        return 2 - 2 * (fmt.bias + fmt.mantissa_bits)

    @property
    def accumulator_lsb_exponent(self):
        return self.product_lsb_exponent + 2 - 2 * (UE4M3.bias + UE4M3.mantissa_bits)

    @property
    def accumulator_width(self):
        """Two's complement bits: exact for any reduction of up to ``max_blocks`` blocks (numerics §8.1)."""
        scale_bits = 2 * UE4M3.significand_bits + 2 * ((1 << UE4M3.exponent_bits) - 1) - 2
        return self.block_sum_bits + scale_bits + _ceil_log2(self._max_blocks) + 1

    @property
    def latency(self):
        """Cycles from the edge that takes a reduction's last block to the earliest edge that can
        transfer its result (``o.valid`` rises one cycle before)."""
        return self._pipeline_stages + 2

    def _decode_element(self, m, name, code, fp8):
        """(sign, significand, exponent, nan) of one element in the common unpacked form."""
        fmt = self._element_format
        sign = Signal(name=f"{name}_sign")
        significand = Signal(fmt.significand_bits, name=f"{name}_sig")
        exponent = Signal(fmt.exponent_bits, name=f"{name}_exp")
        nan = Signal(name=f"{name}_nan")
        if "fp8" in self._formats:
            m.submodules[f"{name}_e4m3"] = e4m3 = Decoder(format=E4M3)
            m.d.comb += e4m3.code.eq(code)
        if "nvfp4" in self._formats:
            m.submodules[f"{name}_e2m1"] = e2m1 = Decoder(format=E2M1)
            m.d.comb += e2m1.code.eq(code[:4])
        if self._formats == FORMATS:
            with m.If(fp8):
                m.d.comb += [sign.eq(e4m3.decoded.sign), significand.eq(e4m3.decoded.significand),
                             exponent.eq(e4m3.decoded.exponent), nan.eq(e4m3.decoded.nan)]
            with m.Else():
                m.d.comb += [sign.eq(e2m1.decoded.sign), significand.eq(e2m1.decoded.significand),
                             exponent.eq(e2m1.decoded.exponent + _E2M1_TO_E4M3_EXPONENT)]
        else:
            decoded = (e4m3 if "fp8" in self._formats else e2m1).decoded
            m.d.comb += [sign.eq(decoded.sign), significand.eq(decoded.significand),
                         exponent.eq(decoded.exponent)]
            if "fp8" in self._formats:
                m.d.comb += nan.eq(decoded.nan)
        return sign, significand, exponent, nan

    def _decode_scale(self, m, name, code):
        m.submodules[name] = decoder = Decoder(format=UE4M3)
        m.d.comb += decoder.code.eq(code)
        return decoder.decoded

    def _fp8_bit(self, block):
        return block.fp8 if len(self._formats) == 2 else Const(self._formats == ("fp8",))

    @staticmethod
    def _tree_sum(m, values, width, name):
        """Balanced adder tree: log2(n) adder levels instead of a chain of n."""
        level = 0
        while len(values) > 1:
            paired = []
            for k in range(0, len(values) - 1, 2):
                total = Signal(signed(width), name=f"{name}_l{level}_{k // 2}")
                m.d.comb += total.eq(values[k] + values[k + 1])
                paired.append(total)
            if len(values) % 2:
                paired.append(values[-1])
            values = paired
            level += 1
        return values[0]

    def _to_fp32(self, m, value, name):
        """RNE to FP32 of value * 2**accumulator_lsb_exponent (numerics §8.2); always normal or zero."""
        width = self.accumulator_width
        magnitude = Signal(width, name=f"{name}_mag")
        m.d.comb += magnitude.eq(Mux(value < 0, -value, value))
        msb = leading_one(m, magnitude, name)
        # Left-align so the leading one sits at the top bit; pad so guard and sticky always exist.
        padded_width = max(width, 25)
        shift = Signal(range(padded_width), name=f"{name}_shift")
        m.d.comb += shift.eq(padded_width - 1 - msb)
        aligned = Signal(padded_width, name=f"{name}_aligned")
        m.d.comb += aligned.eq(magnitude << shift)
        mantissa = aligned[padded_width - 24 : padded_width - 1]
        guard = aligned[padded_width - 25]
        sticky = aligned[: padded_width - 25].any()
        round_up = guard & (sticky | mantissa[0])
        rounded = Signal(24, name=f"{name}_rounded")  # carry out of the 23 mantissa bits lands in bit 23
        m.d.comb += rounded.eq(mantissa + round_up)
        exponent = Signal(8, name=f"{name}_exp")
        m.d.comb += exponent.eq(msb + (127 + self.accumulator_lsb_exponent) + rounded[23])
        bits = Signal(32, name=f"{name}_bits")
        with m.If(magnitude == 0):
            m.d.comb += bits.eq(0)
        with m.Else():
            m.d.comb += bits.eq(Cat(rounded[:23], exponent, value < 0))
        return bits

    def elaborate(self, platform):
        m = Module()
        pipeline = StallPipeline(m, self.i, self.o)
        enable, cut = pipeline.enable, pipeline.cut

        cuts = {"tree": self._pipeline_stages >= 1, "products": self._pipeline_stages >= 2,
                "term": self._pipeline_stages >= 3}
        payload = self.i.payload
        activation_fp8 = self._fp8_bit(payload.activation)
        x_elements = [self._decode_element(m, f"x{i}", payload.activation.codes[i], activation_fp8)
                      for i in range(self._block_size)]
        x_scale = self._decode_scale(m, "x_scale", payload.activation.scale)
        x_nan = Cat(activation_fp8 & e[3] for e in x_elements).any() | x_scale.nan

        product_width = self.product_bits + 1
        stage1 = []  # per lane: element products, scale significand product, scale shift, NaN
        for lane in range(self._lanes):
            weights = payload.weights[lane]
            weight_fp8 = self._fp8_bit(weights)
            products = []
            lane_nan = x_nan
            for i in range(self._block_size):
                ws, wsig, wexp, wnan = self._decode_element(m, f"w{lane}_{i}", weights.codes[i], weight_fp8)
                xs, xsig, xexp, _ = x_elements[i]
                product = Signal(signed(product_width), name=f"p{lane}_{i}")
                shift = Signal(range(2 * (1 << len(wexp)) - 3), name=f"p{lane}_{i}_shift")
                m.d.comb += shift.eq(wexp + xexp - 2)
                magnitude = (wsig * xsig) << shift
                m.d.comb += product.eq(Mux(ws ^ xs, -magnitude, magnitude))
                products.append(product)
                lane_nan = lane_nan | (weight_fp8 & wnan)
            w_scale = self._decode_scale(m, f"w{lane}_scale", weights.scale)
            scale_significand = Signal(2 * UE4M3.significand_bits, name=f"s{lane}_sig")
            scale_shift = Signal(range(2 * ((1 << UE4M3.exponent_bits) - 1) - 1), name=f"s{lane}_shift")
            nan = Signal(name=f"n{lane}")
            m.d.comb += [scale_significand.eq(w_scale.significand * x_scale.significand),
                         scale_shift.eq(w_scale.exponent + x_scale.exponent - 2),
                         nan.eq(lane_nan | w_scale.nan)]
            stage1.append((products, scale_significand, scale_shift, nan))

        flat = [s for products, sig, shift, nan in stage1 for s in (*products, sig, shift, nan)]
        valid, flat = cut(self.i.valid, flat + [payload.first, payload.last], cuts["products"])
        first, last = flat[-2:]
        per_lane = self._block_size + 3

        stage2 = []
        for lane in range(self._lanes):
            chunk = flat[lane * per_lane : (lane + 1) * per_lane]
            products, sig, shift, nan = chunk[: self._block_size], *chunk[self._block_size :]
            block_sum = self._tree_sum(m, products, self.block_sum_bits + 1, f"t{lane}")
            total = Signal(signed(self.block_sum_bits + 1), name=f"sum{lane}")
            m.d.comb += total.eq(block_sum)
            stage2 += [total, sig, shift, nan]
        valid, flat = cut(valid, stage2 + [first, last], cuts["tree"])
        first, last = flat[-2:]

        term_width = self.accumulator_width - _ceil_log2(self._max_blocks)
        stage3 = []
        for lane in range(self._lanes):
            total, sig, shift, nan = flat[lane * 4 : lane * 4 + 4]
            term = Signal(signed(term_width), name=f"term{lane}")
            # Mixed signedness: Amaranth zero-extends the unsigned significand product before multiplying.
            m.d.comb += term.eq((total * sig) << shift)
            stage3 += [term, nan]
        valid, flat = cut(valid, stage3 + [first, last], cuts["term"])
        first, last = flat[-2:]

        # Accumulate; a reduction's exact sum moves to the final register on its last block. A block
        # after a ``last`` starts a new reduction even without ``first``, so a missing marker cannot
        # fold one reduction into the next.
        in_reduction = Signal()
        start = Signal()
        m.d.comb += start.eq(first | ~in_reduction)
        count = Signal(range(self._max_blocks + 2))
        count_next = Signal.like(count)
        m.d.comb += count_next.eq(Mux(start, 1, Mux(count > self._max_blocks, count, count + 1)))
        final_valid = Signal()
        final_overflow = Signal()
        finals = []
        for lane in range(self._lanes):
            term, nan = flat[lane * 2 : lane * 2 + 2]
            accumulator = Signal(signed(self.accumulator_width), name=f"acc{lane}")
            accumulator_nan = Signal(name=f"acc{lane}_nan")
            summed = Signal.like(accumulator, name=f"acc{lane}_next")
            summed_nan = Signal(name=f"acc{lane}_next_nan")
            m.d.comb += [summed.eq(Mux(start, 0, accumulator) + term),
                         summed_nan.eq(Mux(start, 0, accumulator_nan) | nan)]
            final = Signal.like(accumulator, name=f"final{lane}")
            final_nan = Signal(name=f"final{lane}_nan")
            with m.If(enable & valid):
                m.d.sync += [accumulator.eq(summed), accumulator_nan.eq(summed_nan)]
                with m.If(last):
                    m.d.sync += [final.eq(summed), final_nan.eq(summed_nan)]
            finals.append((final, final_nan))
        with m.If(enable):
            m.d.sync += final_valid.eq(valid & last)
            with m.If(valid):
                m.d.sync += [count.eq(count_next), in_reduction.eq(~last)]
                with m.If(last):
                    m.d.sync += final_overflow.eq(count_next > self._max_blocks)

        with m.If(enable):
            m.d.sync += self.o.valid.eq(final_valid)
            m.d.sync += self.o.payload.overflow.eq(final_overflow)
            for lane, (final, final_nan) in enumerate(finals):
                bits = self._to_fp32(m, final, f"fp32_{lane}")
                m.d.sync += self.o.payload.results[lane].eq(Mux(final_nan, _CANONICAL_NAN, bits))
        return m
