"""The tile's post-processing unit (docs/numerics.md §10.1, steps 2 and 3): each FP32 dot result times the
FP32 scale register G, IEEE binary32 with round to nearest even and gradual underflow, then rounded to
BF16; ``width`` results per beat."""

from amaranth import Cat, Const, Module, Mux, Shape, Signal, Value
from amaranth.hdl import ShapeLike
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .arith import leading_one
from .pipeline import StallPipeline, check_count, check_pipeline_stages

__all__ = ["CUTS", "MAX_PIPELINE_STAGES", "PostProcessor"]

# The register cuts in the order the pipeline depth P places them: P cuts are CUTS[:P], the multiplier's
# output first, then the two halves of what follows it, then the multiplier and the shift computation
# split. Each name says what is registered, in dataflow order:
#   partial   the significand times the scale's low and high 12 bits (two 24 x 12 products), before their
#             sum (P >= 4)
#   product   the 48-bit significand product, the exponent sum, the sign and the NaN/Inf/zero flags (P >= 1)
#   shift     the target exponent and the right shift, from the product's leading one, before the
#             shifter (P = 5)
#   aligned   the kept 24 bits, the guard and sticky bits and the target exponent, before the rounding
#             add (P >= 2)
#   fp32      the rounded FP32 word, before the BF16 rounding (P >= 3)
CUTS = ("product", "aligned", "fp32", "partial", "shift")
# The deepest pipeline this unit places cuts for.
MAX_PIPELINE_STAGES = len(CUTS)
_CANONICAL_NAN = 0x7FC00000
_FP32_INF = 0x7F800000
_SHIFT_LIMIT = 49  # the 48-bit product shifted right by 49 or more leaves only sticky bits
_HALF = 12  # the scale's significand split for the partial products


def _check_passthrough(shape):
    if shape is None:
        return
    if not isinstance(shape, ShapeLike):
        raise TypeError(f"Passthrough shape must be a shape-like object, not {shape!r}")
    width = Shape.cast(shape).width
    if width < 1:
        raise ValueError(f"Passthrough shape must be at least 1 bit wide, not {width}")


class PostProcessor(wiring.Component):
    """RNE_FP32(u * G) and its BF16 rounding for ``width`` FP32 values u per beat (numerics §10.1), one beat
    per cycle, bit-exact with ``golden.postprocess``: a 24 x 24-bit significand product, the leading one
    (subnormal operands included), one right shift to the normal or subnormal LSB, RNE with guard and
    sticky bits, overflow to ±Inf, any NaN operand and 0 * Inf to 0x7FC00000, zero sign the XOR; then
    nearest even on bit 16 of that FP32 word (its NaN is canonical, so the BF16 NaN is 0x7FC0).

    Parameters (keyword-only): ``width`` >= 1, the values per beat; ``pipeline_stages``
    0..MAX_PIPELINE_STAGES (register cuts, placed in the order of ``CUTS``); ``passthrough``, an optional
    shape carried unchanged from ``i`` to ``o`` alongside its beat.

    Ports:
    - ``i``: In stream of ``{values: ArrayLayout(32, width)[, passthrough]}``, FP32 bit patterns.
    - ``scale``: In(32), the FP32 bits of G. It is read combinationally by the first stage, not registered:
      it must not change while beats are in the unit.
    - ``o``: Out stream of ``{fp32: ArrayLayout(32, width), bf16: ArrayLayout(16, width)[, passthrough]}``.

    The global-stall pipeline of the other units (``StallPipeline``): every register advances unless the
    output register holds a result the sink does not take; ``i.ready`` is low during reset.
    """

    def __init__(self, *, width=1, pipeline_stages=1, passthrough=None):
        check_count("Width", width, 1)
        check_pipeline_stages(pipeline_stages, MAX_PIPELINE_STAGES)
        _check_passthrough(passthrough)
        self._width = width
        self._pipeline_stages = pipeline_stages
        self._passthrough = passthrough
        in_fields = {"values": data.ArrayLayout(32, width)}
        out_fields = {"fp32": data.ArrayLayout(32, width), "bf16": data.ArrayLayout(16, width)}
        if passthrough is not None:
            in_fields["passthrough"] = out_fields["passthrough"] = passthrough
        super().__init__({
            "i": In(stream.Signature(data.StructLayout(in_fields))),
            "scale": In(32),
            "o": Out(stream.Signature(data.StructLayout(out_fields))),
        })

    @property
    def width(self):
        return self._width

    @property
    def pipeline_stages(self):
        return self._pipeline_stages

    @property
    def passthrough(self):
        return self._passthrough

    @property
    def latency(self):
        """Cycles from the edge that takes a beat to the earliest edge that can transfer its result: one
        per cut and the output register."""
        return self._pipeline_stages + 1

    @staticmethod
    def _fields(m, word, name):
        """(sign, biased exponent with subnormals at 1, 24-bit significand, zero, Inf, NaN) of an FP32 word."""
        exponent_field = word[23:31]
        mantissa = word[:23]
        normal = exponent_field.any()
        exponent = Signal(8, name=f"{name}_exp")
        significand = Signal(24, name=f"{name}_sig")
        special = exponent_field.all()
        flags = {key: Signal(name=f"{name}_{key}") for key in ("zero", "inf", "nan")}
        m.d.comb += [exponent.eq(exponent_field | ~normal), significand.eq(Cat(mantissa, normal)),
                     flags["zero"].eq(~word[:31].any()), flags["inf"].eq(special & ~mantissa.any()),
                     flags["nan"].eq(special & mantissa.any())]
        return word[31], exponent, significand, flags

    def elaborate(self, platform):
        m = Module()
        W = self._width
        pipeline = StallPipeline(m, self.i, self.o)
        cuts = set(CUTS[:self._pipeline_stages])
        valid = self.i.valid
        sign_g, exp_g, sig_g, flags_g = self._fields(m, self.scale, "scale")
        sig_g_low = sig_g[:_HALF]
        sig_g_high = sig_g[_HALF:]

        lanes = []
        for e in range(W):
            sign_a, exp_a, sig_a, flags_a = self._fields(m, self.i.payload.values[e], f"u{e}")
            low = Signal(24 + _HALF, name=f"u{e}_pp_low")
            high = Signal(24 + 24 - _HALF, name=f"u{e}_pp_high")
            exponent_sum = Signal(9, name=f"u{e}_exp_sum")
            nan = Signal(name=f"u{e}_nan")
            inf = Signal(name=f"u{e}_inf")
            zero = Signal(name=f"u{e}_zero")
            m.d.comb += [
                low.eq(sig_a * sig_g_low), high.eq(sig_a * sig_g_high), exponent_sum.eq(exp_a + exp_g),
                nan.eq(flags_a["nan"] | flags_g["nan"] | (flags_a["zero"] & flags_g["inf"])
                       | (flags_a["inf"] & flags_g["zero"])),
                inf.eq(flags_a["inf"] | flags_g["inf"]),
                zero.eq(flags_a["zero"] | flags_g["zero"]),
            ]
            lanes.append({"low": low, "high": high, "exponent_sum": exponent_sum, "sign": sign_a ^ sign_g,
                          "nan": nan, "inf": inf, "zero": zero})
        live = {"lanes": lanes}
        if self._passthrough is not None:
            live["passthrough"] = Value.cast(self.i.payload.passthrough)

        def cut(name):
            nonlocal valid, live
            valid, live = pipeline.stage(valid, live, name in cuts)

        cut("partial")
        for e, lane in enumerate(live["lanes"]):
            product = Signal(48, name=f"u{e}_product")
            m.d.comb += product.eq(lane.pop("low") + (lane.pop("high") << _HALF))
            lane["product"] = product
        cut("product")

        for e, lane in enumerate(live["lanes"]):
            # u * G = P * 2**(S - 300). The leading one's biased exponent is msb + S - 173; the result's LSB
            # sits 23 below it, or at the subnormal LSB 2**-149 (target exponent 1), whichever is higher.
            product, exponent_sum = lane["product"], lane.pop("exponent_sum")
            msb = leading_one(m, product, f"u{e}_product")
            leading = Signal(range(-173, 47 + 508 - 173 + 1), name=f"u{e}_leading")
            target = Signal(range(1, 47 + 508 - 173 + 1), name=f"u{e}_target")
            m.d.comb += [leading.eq(msb + exponent_sum - 173), target.eq(Mux(leading < 1, 1, leading))]
            # target + 150 - S: msb - 23 for a normal result, 151 - S for a subnormal one; never negative
            # (a leading one below bit 23 needs two subnormal operands, S = 2).
            shift_raw = Signal(range(-508, 47 + 508 + 1), name=f"u{e}_shift_raw")
            shift = Signal(range(_SHIFT_LIMIT + 1), name=f"u{e}_shift")
            m.d.comb += [shift_raw.eq(target + 150 - exponent_sum),
                         shift.eq(Mux(shift_raw > _SHIFT_LIMIT, _SHIFT_LIMIT, shift_raw))]
            lane.update(target=target, shift=shift)
        cut("shift")

        for e, lane in enumerate(live["lanes"]):
            # The product with a zero below it, shifted right: bit 0 is the guard bit, bits 1..24 the kept
            # significand; every bit the shift drops below the guard is sticky.
            extended = Cat(Const(0, 1), lane.pop("product"))
            shift = lane.pop("shift")
            shifted = Signal(25, name=f"u{e}_shifted")
            sticky = Signal(name=f"u{e}_sticky")
            m.d.comb += [shifted.eq(extended >> shift),
                         sticky.eq((extended & ((Const(1, _SHIFT_LIMIT + 1) << shift) - 1)).any())]
            kept = Signal(24, name=f"u{e}_kept")
            guard = Signal(name=f"u{e}_guard")
            m.d.comb += [kept.eq(shifted[1:]), guard.eq(shifted[0])]
            lane.update(kept=kept, guard=guard, sticky=sticky)
        cut("aligned")

        for e, lane in enumerate(live["lanes"]):
            kept = lane.pop("kept")
            rounded = Signal(25, name=f"u{e}_rounded")
            m.d.comb += rounded.eq(kept + (lane.pop("guard") & (lane.pop("sticky") | kept[0])))
            # (target - 1) << 23 plus the rounded significand covers normals, subnormals, the carry into the
            # next binade and a subnormal rounding up to the smallest normal alike.
            code = Signal(range(((47 + 508 - 173) << 23) + (1 << 25)), name=f"u{e}_code")
            m.d.comb += code.eq(((lane.pop("target") - 1) << 23) + rounded)
            magnitude = Signal(31, name=f"u{e}_magnitude")
            with m.If(lane["nan"]):
                m.d.comb += magnitude.eq(_CANONICAL_NAN)
            with m.Elif(lane["inf"] | (code >= _FP32_INF)):
                m.d.comb += magnitude.eq(_FP32_INF)
            with m.Elif(lane["zero"]):
                m.d.comb += magnitude.eq(0)
            with m.Else():
                m.d.comb += magnitude.eq(code)
            fp32 = Signal(32, name=f"u{e}_fp32")
            m.d.comb += fp32.eq(Cat(magnitude, lane["sign"] & ~lane["nan"]))
            live["lanes"][e] = {"fp32": fp32}
        cut("fp32")

        with m.If(pipeline.enable):
            m.d.sync += self.o.valid.eq(valid)
            for e, lane in enumerate(live["lanes"]):
                # Nearest even on bit 16; the canonical FP32 NaN rounds to the canonical BF16 NaN 0x7FC0,
                # and the largest finite words round to Inf.
                fp32 = lane["fp32"]
                bf16 = Signal(16, name=f"u{e}_bf16")
                m.d.comb += bf16.eq(fp32[16:] + (fp32[15] & (fp32[:15].any() | fp32[16])))
                m.d.sync += [self.o.payload.fp32[e].eq(fp32), self.o.payload.bf16[e].eq(bf16)]
            if self._passthrough is not None:
                m.d.sync += self.o.payload.passthrough.eq(live["passthrough"])
        return m
