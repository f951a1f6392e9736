"""Format decoders: a code in, the unpacked (sign, exponent, significand, flags) form out."""

from amaranth import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .formats import Format

__all__ = ["Decoder"]


class Decoder(wiring.Component):
    """Combinational decoder of one ``format`` code (docs/numerics.md §7).

    It sits inside datapaths, next to the multipliers it feeds, so it has no stream handshake and no
    register: the enclosing unit owns timing.

    Ports: ``code`` (In, ``format.code_bits``), ``decoded`` (Out, ``format.decoded_layout``).
    """

    def __init__(self, *, format):
        if not isinstance(format, Format):
            raise TypeError(f"Format must be a fgmp.hw.formats.Format, not {format!r}")
        self._format = format
        super().__init__({"code": In(format.code_bits), "decoded": Out(format.decoded_layout)})

    @property
    def format(self):
        return self._format

    def elaborate(self, platform):
        m = Module()
        fmt = self._format
        magnitude = self.code[: fmt.magnitude_bits]
        exponent_field = magnitude[fmt.mantissa_bits :]
        mantissa_field = magnitude[: fmt.mantissa_bits]
        normal = exponent_field.any()

        if fmt.signed:
            m.d.comb += self.decoded.sign.eq(self.code[fmt.magnitude_bits])
        # Subnormals share the smallest normal exponent; only the hidden bit differs.
        m.d.comb += [
            self.decoded.exponent.eq(exponent_field | ~normal),
            self.decoded.significand.eq(mantissa_field | (normal << fmt.mantissa_bits)),
            self.decoded.zero.eq(~magnitude.any()),
        ]
        if fmt.has_nan:
            nan = magnitude.all()
            if not fmt.signed and fmt.code_bits > fmt.magnitude_bits:
                nan |= self.code[fmt.magnitude_bits :].any()
            m.d.comb += self.decoded.nan.eq(nan)
        return m
