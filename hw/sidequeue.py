"""A queue for data that travels beside a pipelined unit: pushed when the unit takes an input, popped
when the unit's result leaves, so that it meets its result without riding through the unit's registers."""

from amaranth import Module, Mux, Shape, Signal
from amaranth.hdl import ShapeLike
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["SideQueue"]


class SideQueue(wiring.Component):
    """A FIFO of ``depth`` entries in a memory, read through a register (so that it maps to block RAM)
    or, with ``registered_read`` false, asynchronously (LUT RAM).

    There is no level and no full or empty flag: the unit beside it bounds how many entries are in
    flight (its credits, or its stage count under stall), and ``depth`` must be at least that bound.
    So ``w_en`` writes without a check, and no count gates the write enable of a wide memory.

    Timing: ``r_data`` is the head, and a pop on an edge shows the next entry from that edge. An entry
    pushed on an edge is the head's value from that edge on with an asynchronous read, and from the next
    edge on with a registered one (the registered read is not transparent: bypassing the write would put
    a wide multiplexer behind the block RAM), so a unit whose result can leave on the edge after it took
    the input needs the asynchronous read.

    Parameters (keyword-only): ``shape`` (shape-like, at least 1 bit), ``depth`` (integer, at least 2),
    ``registered_read`` (bool, default True).

    Ports: ``w_en``, ``w_data`` (push), ``r_en`` (pop), ``r_data`` (the head).
    """

    def __init__(self, *, shape, depth, registered_read=True):
        if not isinstance(shape, ShapeLike):
            raise TypeError(f"Entry shape must be a shape-like object, not {shape!r}")
        width = Shape.cast(shape).width
        if width < 1:
            raise ValueError(f"Entry shape must be at least 1 bit wide, not {width}")
        if not isinstance(depth, int) or isinstance(depth, bool):
            raise TypeError(f"Queue depth must be an integer, not {depth!r}")
        if depth < 2:
            raise ValueError(f"Queue depth must be at least 2, not {depth}")
        if not isinstance(registered_read, bool):
            raise TypeError(f"Registered read must be a bool, not {registered_read!r}")
        self._shape = shape
        self._depth = depth
        self._registered_read = registered_read
        super().__init__({"w_en": In(1), "w_data": In(shape), "r_en": In(1), "r_data": Out(shape)})

    @property
    def shape(self):
        return self._shape

    @property
    def depth(self):
        return self._depth

    @property
    def registered_read(self):
        return self._registered_read

    def elaborate(self, platform):
        m = Module()
        m.submodules.storage = storage = memory.Memory(shape=self._shape, depth=self._depth, init=[])
        write = storage.write_port()
        if self._registered_read:
            read = storage.read_port(domain="sync", transparent_for=())
        else:
            read = storage.read_port(domain="comb")

        def following(pointer):
            return Mux(pointer == self._depth - 1, 0, pointer + 1)

        tail = Signal(range(self._depth))
        head = Signal(range(self._depth))
        m.d.comb += [write.en.eq(self.w_en), write.addr.eq(tail), write.data.eq(self.w_data),
                     self.r_data.eq(read.data)]
        # A registered read samples the head as it will be after this edge's pop.
        m.d.comb += read.addr.eq(Mux(self.r_en, following(head), head) if self._registered_read else head)
        with m.If(self.w_en):
            m.d.sync += tail.eq(following(tail))
        with m.If(self.r_en):
            m.d.sync += head.eq(following(head))
        return m
