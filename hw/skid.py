"""A skid buffer: a two-entry stream register whose ``i.ready`` comes from a flip-flop, so that the ready
path of the sink does not run combinationally into the source."""

from amaranth import Module, Shape, Signal
from amaranth.hdl import ShapeLike
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["SkidBuffer"]


class SkidBuffer(wiring.Component):
    """Passes a stream through an output register and a second ("skid") entry: when the sink stalls, the
    transfer the source made on that edge (it saw the registered ready still high) lands in the skid entry,
    and ``i.ready`` falls for the next cycle. One transfer per cycle without back-pressure; the latency
    is one cycle.

    Parameters (keyword-only): ``shape``, the payload's shape (any shape-like object, at least 1 bit).

    Ports: ``i`` (In stream of ``shape``), ``o`` (Out stream of ``shape``). ``i.ready`` is a register, low
    during reset and the cycle after it.
    """

    def __init__(self, *, shape):
        if not isinstance(shape, ShapeLike):
            raise TypeError(f"Payload shape must be a shape-like object, not {shape!r}")
        width = Shape.cast(shape).width
        if width < 1:
            raise ValueError(f"Payload shape must be at least 1 bit wide, not {width}")
        self._shape = shape
        super().__init__({"i": In(stream.Signature(shape)), "o": Out(stream.Signature(shape))})

    @property
    def shape(self):
        return self._shape

    @property
    def latency(self):
        """Cycles from the edge that takes a transfer to the earliest edge that can pass it on."""
        return 1

    def elaborate(self, platform):
        m = Module()
        skid_payload = Signal.like(self.i.payload)
        skid_valid = Signal()
        ready = Signal()  # init 0: not ready during reset, so nothing is offered into a register held in reset
        m.d.comb += self.i.ready.eq(ready)
        taken = self.i.valid & ready
        skid_valid_next = Signal()
        with m.If(~self.o.valid | self.o.ready):
            # The output register empties this edge: it takes the skid entry first, else the input.
            m.d.comb += skid_valid_next.eq(0)
            with m.If(skid_valid):
                m.d.sync += [self.o.valid.eq(1), self.o.payload.eq(skid_payload)]
            with m.Else():
                m.d.sync += [self.o.valid.eq(taken), self.o.payload.eq(self.i.payload)]
        with m.Else():
            # Stalled: a transfer on this edge (ready was high, so the skid entry is free) goes to the skid.
            m.d.comb += skid_valid_next.eq(skid_valid | taken)
            with m.If(taken):
                m.d.sync += skid_payload.eq(self.i.payload)
        m.d.sync += [skid_valid.eq(skid_valid_next), ready.eq(~skid_valid_next)]
        return m
