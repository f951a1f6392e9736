"""A skid buffer: a two-entry stream register whose ``i.ready`` comes from a flip-flop, so that the ready
path of the sink does not run combinationally into the source."""

from amaranth import Module, Shape, Signal, Value
from amaranth.hdl import ShapeLike
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from .pipeline import check_count

__all__ = ["SkidBuffer"]


class SkidBuffer(wiring.Component):
    """Passes a stream through an output register and a second ("skid") entry: when the sink stalls, the
    transfer the source made on that edge (it saw the registered ready still high) lands in the skid entry,
    and ``i.ready`` falls for the next cycle. One transfer per cycle without back-pressure; the latency
    is one cycle.

    Parameters (keyword-only): ``shape``, the payload's shape (any shape-like object, at least 1 bit);
    ``slices`` (default 1, at most the payload's width): the payload in this many parts of near-equal
    width, each with its own copy of the control registers (valid, skid valid, ready). A wide payload
    whose consumers spread over a die otherwise has one handshake driving every register's enable over
    one long net; with a copy per part, each part's enable is formed beside it. The copies see the same
    inputs and stay equal; they are ``keep`` registers, which the synthesis flow does not merge.

    Ports: ``i`` (In stream of ``shape``), ``o`` (Out stream of ``shape``). ``i.ready`` is a register, low
    during reset and the cycle after it.
    """

    def __init__(self, *, shape, slices=1):
        if not isinstance(shape, ShapeLike):
            raise TypeError(f"Payload shape must be a shape-like object, not {shape!r}")
        width = Shape.cast(shape).width
        if width < 1:
            raise ValueError(f"Payload shape must be at least 1 bit wide, not {width}")
        check_count("Slices", slices, 1)
        if slices > width:
            raise ValueError(f"Slices ({slices}) must not exceed the payload's width ({width})")
        self._shape = shape
        self._slices = slices
        super().__init__({"i": In(stream.Signature(shape)), "o": Out(stream.Signature(shape))})

    @property
    def shape(self):
        return self._shape

    @property
    def slices(self):
        return self._slices

    @property
    def latency(self):
        """Cycles from the edge that takes a transfer to the earliest edge that can pass it on."""
        return 1

    def elaborate(self, platform):
        m = Module()
        if self._slices == 1:  # the plain buffer: one control, names and netlist as before parts existed
            ready = Signal()  # init 0: not ready during reset, so nothing is offered into a register held in reset
            m.d.comb += self.i.ready.eq(ready)
            _control(m, self.i, self.o.ready, self.i.payload, self.o.valid, self.o.payload,
                     Signal.like(self.i.payload, name="skid_payload"), ready, "")
            return m
        width = Shape.cast(self._shape).width
        bounds = [width * k // self._slices for k in range(self._slices + 1)]
        i_bits, o_bits = Value.cast(self.i.payload), Value.cast(self.o.payload)
        for k, (low, high) in enumerate(zip(bounds, bounds[1:])):
            # Each part's control registers are copies (``keep``, so synthesis does not merge them).
            ready = Signal(name=f"ready_{k}", attrs={"keep": 1})
            o_valid = Signal(name=f"o_valid_{k}", attrs={"keep": 1})
            o_payload = Signal(high - low, name=f"o_payload_{k}")
            _control(m, self.i, self.o.ready, i_bits[low:high], o_valid, o_payload,
                     Signal(high - low, name=f"skid_payload_{k}"), ready, f"_{k}")
            m.d.comb += o_bits[low:high].eq(o_payload)
            if k == 0:
                m.d.comb += [self.i.ready.eq(ready), self.o.valid.eq(o_valid)]
        return m


def _control(m, i, o_ready, incoming, o_valid, o_payload, skid_payload, ready, suffix):
    """A skid buffer's registers for ``incoming`` (all of the payload, or one part with its own copy of
    the control): the output register, the skid entry, their valid bits and the registered ready."""
    skid_valid = Signal(name=f"skid_valid{suffix}", attrs={"keep": 1} if suffix else {})
    taken = i.valid & ready
    skid_valid_next = Signal(name=f"skid_valid_next{suffix}")
    with m.If(~o_valid | o_ready):
        # The output register empties this edge: it takes the skid entry first, else the input.
        m.d.comb += skid_valid_next.eq(0)
        with m.If(skid_valid):
            m.d.sync += [o_valid.eq(1), o_payload.eq(skid_payload)]
        with m.Else():
            m.d.sync += [o_valid.eq(taken), o_payload.eq(incoming)]
    with m.Else():
        # Stalled: a transfer on this edge (ready was high, so the skid entry is free) goes to the skid.
        m.d.comb += skid_valid_next.eq(skid_valid | taken)
        with m.If(taken):
            m.d.sync += skid_payload.eq(incoming)
    m.d.sync += [skid_valid.eq(skid_valid_next), ready.eq(~skid_valid_next)]
