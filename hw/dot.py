"""The FGMP dot-product unit (docs/numerics.md §8): L lanes, exact accumulation, one block pair per cycle."""

from dataclasses import dataclass

from amaranth import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .arith import leading_one
from .decoder import Decoder
from .formats import E2M1, E4M3, UE4M3, Format
from .pipeline import StallPipeline, check_count, check_pipeline_stages

__all__ = ["MAX_PIPELINE_STAGES", "DotUnit", "FORMATS", "DATAPATHS", "block_layout"]

# The deepest pipeline this unit places cuts for (docs/interfaces.md lists them in order).
MAX_PIPELINE_STAGES = 3
FORMATS = ("nvfp4", "fp8")
# shared: every pairing on one FP8-width path. split: FP4xFP4 pairs on a narrow path of their own
# (docs/hardware.md, with the third path for FP4xFP8 pairs that was measured and dropped).
DATAPATHS = ("shared", "split")
_CANONICAL_NAN = 0x7FC00000
# E2M1 joins the E4M3 datapath exactly: same significand, exponent + 8 (bias 1 / 1 mantissa bit vs 7 / 3).
_E2M1_TO_E4M3_EXPONENT = (E4M3.bias + E4M3.mantissa_bits) - (E2M1.bias + E2M1.mantissa_bits)
_SCALE_SIGNIFICAND_BITS = 2 * UE4M3.significand_bits
_SCALE_SHIFT_RANGE = 2 * ((1 << UE4M3.exponent_bits) - 1) - 1  # w + x exponent - 2: 0..28


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


def _check_datapath(datapath, formats):
    if not isinstance(datapath, str):
        raise TypeError(f"Datapath must be one of {', '.join(map(repr, DATAPATHS))}, not {datapath!r}")
    if datapath not in DATAPATHS:
        raise ValueError(f"Unknown datapath {datapath!r}; choose from {', '.join(map(repr, DATAPATHS))}")
    if datapath != "shared" and len(formats) != 2:
        raise ValueError(f"The {datapath} datapath needs both formats ('nvfp4', 'fp8'), not {formats!r}")


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


@dataclass(frozen=True)
class _Path:
    """One lane's element multipliers, adder tree and scale multiply for operands in formats ``a`` x ``b``
    (decoded form, numerics §7). Its signals are named with ``prefix``; products are integers at
    ``lsb_exponent``, and its terms join the accumulator shifted up to the widest path's LSB."""

    prefix: str
    a: Format
    b: Format

    @property
    def product_bits(self):
        return (self.a.significand_bits + self.b.significand_bits + (1 << self.a.exponent_bits) - 2
                + (1 << self.b.exponent_bits) - 2)

    @property
    def max_shift(self):
        """Largest product alignment, a + b exponent - 2 (subnormals decode to exponent 1)."""
        return (1 << self.a.exponent_bits) + (1 << self.b.exponent_bits) - 4

    @property
    def lsb_exponent(self):
        return 2 - (self.a.bias + self.a.mantissa_bits) - (self.b.bias + self.b.mantissa_bits)

    def block_sum_bits(self, block_size):
        return self.product_bits + _ceil_log2(block_size)

    def term_bits(self, block_size):
        """Signed bits of block sum x scale significand product << scale shift."""
        return self.block_sum_bits(block_size) + 1 + _SCALE_SIGNIFICAND_BITS + _SCALE_SHIFT_RANGE - 1


# The paths a datapath runs, widest first; a pairing runs on the path of its element formats.
_WIDE, _WIDE_FP4 = _Path("", E4M3, E4M3), _Path("", E2M1, E2M1)
_NARROW = _Path("n", E2M1, E2M1)  # FP4 x FP4


class DotUnit(wiring.Component):
    """One activation block broadcast to ``lanes`` weight blocks; each lane accumulates exactly over a
    reduction and emits RNE_FP32 of the sum (numerics §8).

    Parameters (keyword-only): ``lanes`` >= 1; ``block_size`` >= 1 (default 16); ``max_blocks``, the
    longest reduction in blocks that stays exact (sets the accumulator width; longer ones raise the
    ``overflow`` flag); ``pipeline_stages`` in 0..3, extra register cuts (after the adder tree, after the
    element products, after the scale multiply, in that order); ``formats``, a tuple of 'nvfp4' and/or
    'fp8' (FGMP, FP8-only or FP4-only units); ``datapath`` (FGMP units): 'shared' runs every pairing on
    one FP8-width path, 'split' runs FP4xFP4 pairs on a narrow path of their own. The split datapath
    registers each path's operands and loads them only in the cycles the path is used, so an idle path
    holds still; that register adds one cycle of latency.

    Ports: ``i`` (In stream of ``{activation, weights[lanes], first, last}``), ``o`` (Out stream of
    ``{results[lanes] (FP32 bits), overflow}``, one transfer per reduction). A block with ``first`` set,
    or the first block after a ``last``, starts a reduction; ``last`` ends it. Every cycle that ``o`` is not stalled, ``i`` is ready.
    """

    def __init__(self, *, lanes, block_size=16, max_blocks=1024, pipeline_stages=1, formats=FORMATS,
                 datapath="shared"):
        check_count("Lanes", lanes, 1)
        check_count("Block size", block_size, 1)
        check_count("Maximum blocks", max_blocks, 1)
        check_pipeline_stages(pipeline_stages, MAX_PIPELINE_STAGES)
        _check_formats(formats)
        _check_datapath(datapath, formats)
        self._lanes = lanes
        self._block_size = block_size
        self._max_blocks = max_blocks
        self._pipeline_stages = pipeline_stages
        self._formats = tuple(f for f in FORMATS if f in formats)
        self._datapath = datapath
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
    def datapath(self):
        return self._datapath

    @property
    def _paths(self):
        wide = _WIDE if "fp8" in self._formats else _WIDE_FP4
        return {"shared": (wide,), "split": (wide, _NARROW)}[self._datapath]

    @property
    def _element_format(self):
        """The unpacked form the widest multipliers see: E4M3's whenever FP8 is enabled, else E2M1's."""
        return self._paths[0].a

    @property
    def product_bits(self):
        return self._paths[0].product_bits

    @property
    def block_sum_bits(self):
        return self._paths[0].block_sum_bits(self._block_size)

    @property
    def product_lsb_exponent(self):
        """Element products of the widest path are integers at this power of two (-18 with FP8, -2 for
        FP4-only)."""
        return self._paths[0].lsb_exponent

    @property
    def accumulator_lsb_exponent(self):
        return self.product_lsb_exponent + 2 - 2 * (UE4M3.bias + UE4M3.mantissa_bits)

    @property
    def accumulator_width(self):
        """Two's complement bits: exact for any reduction of up to ``max_blocks`` blocks (numerics §8.1)."""
        return self._paths[0].term_bits(self._block_size) + _ceil_log2(self._max_blocks)

    @property
    def latency(self):
        """Cycles from the edge that takes a reduction's last block to the earliest edge that can
        transfer its result (``o.valid`` rises one cycle before)."""
        return self._pipeline_stages + 2 + (self._datapath != "shared")

    def _decode_element(self, m, name, code, fp8):
        """({format: (sign, significand, exponent)}, NaN flag) of one element. The widest path's format
        (E4M3 whenever FP8 is enabled, NVFP4 elements promoted into it; else E2M1) is always there; the
        split datapath adds the E2M1 form for its narrow path."""
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
        forms = {fmt: (sign, significand, exponent)}
        if self._datapath != "shared":
            forms[E2M1] = (e2m1.decoded.sign, e2m1.decoded.significand, e2m1.decoded.exponent)
        return forms, fp8 & nan

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

    @staticmethod
    def _operands(path, x_elements, w_elements):
        """[(activation element, weight element)] in ``path``'s operand formats, one pair per position."""
        return [x_forms[path.a] + w_forms[path.b] for x_forms, w_forms in zip(x_elements, w_elements)]

    def _hold_operands(self, m, enable, load, lane, path, operands, scale):
        """The path's operand registers: loaded only when ``load`` (the lane's pair runs on this path),
        held otherwise, so the path's logic sees no new values in the cycles it is not used."""
        held = []
        for i, fields in enumerate(operands):
            registers = []
            for role, value in zip(("a_sign", "a_sig", "a_exp", "b_sign", "b_sig", "b_exp"), fields):
                # No reset: a path's result is used only after its operands were loaded. Decoded exponents
                # are >= 1 (numerics §7), so from power-up a path holds a valid zero operand and its product
                # alignment does not move when the path first runs.
                register = Signal(len(value), name=f"{path.prefix}op{lane}_{i}_{role}", init=role.endswith("exp"),
                                  reset_less=True)
                with m.If(enable & load):
                    m.d.sync += register.eq(value)
                registers.append(register)
            held.append(tuple(registers))
        scale_registers = []
        for role, value in zip(("ssig", "sshift"), scale):
            register = Signal(len(value), name=f"{path.prefix}op{lane}_{role}", reset_less=True)
            with m.If(enable & load):
                m.d.sync += register.eq(value)
            scale_registers.append(register)
        return held, tuple(scale_registers)

    def elaborate(self, platform):
        m = Module()
        pipeline = StallPipeline(m, self.i, self.o)
        enable, cut = pipeline.enable, pipeline.cut
        paths = self._paths
        split = self._datapath != "shared"

        cuts = {"tree": self._pipeline_stages >= 1, "products": self._pipeline_stages >= 2,
                "term": self._pipeline_stages >= 3}
        payload = self.i.payload
        activation_fp8 = self._fp8_bit(payload.activation)
        x_decoded = [self._decode_element(m, f"x{i}", payload.activation.codes[i], activation_fp8)
                     for i in range(self._block_size)]
        x_elements = [forms for forms, _ in x_decoded]
        x_scale = self._decode_scale(m, "x_scale", payload.activation.scale)
        x_nan = Cat(nan for _, nan in x_decoded).any() | x_scale.nan

        # Per lane: the decoded weight block, the scale product, the NaN flag and the path of the pair.
        lanes = []
        for lane in range(self._lanes):
            weights = payload.weights[lane]
            weight_fp8 = self._fp8_bit(weights)
            w_decoded = [self._decode_element(m, f"w{lane}_{i}", weights.codes[i], weight_fp8)
                         for i in range(self._block_size)]
            w_scale = self._decode_scale(m, f"w{lane}_scale", weights.scale)
            scale_significand = Signal(_SCALE_SIGNIFICAND_BITS, name=f"s{lane}_sig")
            scale_shift = Signal(range(_SCALE_SHIFT_RANGE), name=f"s{lane}_shift")
            nan = Signal(name=f"n{lane}")
            m.d.comb += [scale_significand.eq(w_scale.significand * x_scale.significand),
                         scale_shift.eq(w_scale.exponent + x_scale.exponent - 2),
                         nan.eq(Cat(x_nan, *(n for _, n in w_decoded)).any() | w_scale.nan)]
            # One select per path after the widest (the FP4 x FP4 one); none set: the widest path.
            selects = []
            if split:
                narrow = Signal(name=f"sel{lane}_fp4")
                m.d.comb += narrow.eq(~activation_fp8 & ~weight_fp8)
                selects.append(narrow)
            operands = {path: self._operands(path, x_elements, [f for f, _ in w_decoded]) for path in paths}
            lanes.append((operands, (scale_significand, scale_shift), nan, selects))

        valid, first, last = self.i.valid, payload.first, payload.last
        if split:
            # The split datapath's operand registers: a path loads only in the cycles it runs a pair.
            held = []
            for lane, (operands, scale, nan, selects) in enumerate(lanes):
                wide_load = ~Cat(*selects).any()
                loads = [wide_load, *selects]
                held.append(({path: self._hold_operands(m, enable, self.i.valid & load, lane, path,
                                                        operands[path], scale)
                              for path, load in zip(paths, loads)}, nan, selects))
            control = [s for _, nan, selects in held for s in (nan, *selects)]
            valid, registered = cut(valid, control + [first, last], True)
            first, last = registered[-2:]
            per_lane = 1 + len(paths) - 1
            lanes = [(held[lane][0], registered[lane * per_lane], registered[lane * per_lane + 1:(lane + 1) * per_lane])
                     for lane in range(self._lanes)]
        else:
            lanes = [({paths[0]: (operands[paths[0]], scale)}, nan, selects)
                     for operands, scale, nan, selects in lanes]

        # Element products, per lane and path.
        stage1 = []
        for lane, (by_path, nan, selects) in enumerate(lanes):
            for path in paths:
                operands, (scale_significand, scale_shift) = by_path[path]
                for i, (xs, xsig, xexp, ws, wsig, wexp) in enumerate(operands):  # (a, b): activation, weight
                    product = Signal(signed(path.product_bits + 1), name=f"{path.prefix}p{lane}_{i}")
                    shift = Signal(range(path.max_shift + 1), name=f"{path.prefix}p{lane}_{i}_shift")
                    m.d.comb += shift.eq(wexp + xexp - 2)
                    magnitude = (wsig * xsig) << shift
                    m.d.comb += product.eq(Mux(ws ^ xs, -magnitude, magnitude))
                    stage1.append(product)
                stage1 += [scale_significand, scale_shift]
            stage1 += [nan, *selects]
        valid, flat = cut(valid, stage1 + [first, last], cuts["products"])
        first, last = flat[-2:]

        # Adder trees, per lane and path.
        stage2, at = [], 0
        for lane in range(self._lanes):
            for path in paths:
                products = flat[at:at + self._block_size]
                sig, shift = flat[at + self._block_size:at + self._block_size + 2]
                at += self._block_size + 2
                width = path.block_sum_bits(self._block_size) + 1
                block_sum = self._tree_sum(m, products, width, f"{path.prefix}t{lane}")
                total = Signal(signed(width), name=f"{path.prefix}sum{lane}")
                m.d.comb += total.eq(block_sum)
                stage2 += [total, sig, shift]
            stage2 += flat[at:at + len(paths)]  # nan, selects
            at += len(paths)
        valid, flat = cut(valid, stage2 + [first, last], cuts["tree"])
        first, last = flat[-2:]

        # Block terms (block sum x scale product), per lane and path.
        stage3, at = [], 0
        for lane in range(self._lanes):
            for path in paths:
                total, sig, shift = flat[at:at + 3]
                at += 3
                term = Signal(signed(path.term_bits(self._block_size)), name=f"{path.prefix}term{lane}")
                # Mixed signedness: Amaranth zero-extends the unsigned significand product before multiplying.
                m.d.comb += term.eq((total * sig) << shift)
                stage3.append(term)
            stage3 += flat[at:at + len(paths)]
            at += len(paths)
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
        per_lane = 2 * len(paths)
        for lane in range(self._lanes):
            terms = flat[lane * per_lane:lane * per_lane + len(paths)]
            nan, *selects = flat[lane * per_lane + len(paths):(lane + 1) * per_lane]
            accumulator = Signal(signed(self.accumulator_width), name=f"acc{lane}")
            term = terms[0]
            if split:  # the pair's path, its term moved up to the accumulator's LSB
                term = Signal(signed(self.accumulator_width), name=f"acc{lane}_term")
                chosen = terms[0]
                for path, path_term, select in zip(paths[1:], terms[1:], selects):
                    chosen = Mux(select, path_term << (path.lsb_exponent - paths[0].lsb_exponent), chosen)
                m.d.comb += term.eq(chosen)
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
