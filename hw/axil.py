"""An AXI4-Lite subordinate bridge: the tile's host bus, turned into one simple request at a time.

``AXI4LiteSignature`` is the bus from the manager's point of view (a component that answers the bus takes
it as ``In(...)``). ``AXI4LiteBridge`` takes AW and W in either order (or together), and AR, into holding
registers, presents one access at a time on ``req`` and holds its response on B or R until the manager
takes it. Every bus output is a flip-flop: no valid -> ready path runs through the bridge, and every
ready is low during reset and the cycle after it.
"""

from amaranth import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["AXI4LiteSignature", "AXI4LiteBridge", "RequestSignature", "OKAY", "SLVERR"]

OKAY = 0b00
SLVERR = 0b10

_DATA_WIDTHS = (32, 64)


def _check_widths(addr_width, data_width):
    if not isinstance(data_width, int) or isinstance(data_width, bool) or data_width not in _DATA_WIDTHS:
        raise ValueError(f"Data width must be 32 or 64, not {data_width!r}")
    if not isinstance(addr_width, int) or isinstance(addr_width, bool):
        raise TypeError(f"Address width must be an integer, not {addr_width!r}")
    minimum = _byte_bits(data_width)
    if addr_width < minimum:
        raise ValueError(f"Address width must be at least {minimum} for {data_width}-bit data, not {addr_width}")


def _byte_bits(data_width):
    """Low address bits that select a byte within a data word (2 for 32-bit data, 3 for 64-bit)."""
    return (data_width // 8 - 1).bit_length()


class AXI4LiteSignature(wiring.Signature):
    """AXI4-Lite, from the manager's (master's) side, without the prot signals: ``awaddr``, ``awvalid``,
    ``awready``; ``wdata``, ``wstrb``, ``wvalid``, ``wready``; ``bresp`` (2 bits), ``bvalid``, ``bready``;
    ``araddr``, ``arvalid``, ``arready``; ``rdata``, ``rresp`` (2 bits), ``rvalid``, ``rready``.

    Parameters (keyword-only): ``addr_width`` (byte address bits, at least 2 for 32-bit data and 3 for
    64-bit data), ``data_width`` (32 or 64)."""

    def __init__(self, *, addr_width, data_width=32):
        _check_widths(addr_width, data_width)
        self._addr_width, self._data_width = addr_width, data_width
        super().__init__({
            "awaddr": Out(addr_width), "awvalid": Out(1), "awready": In(1),
            "wdata": Out(data_width), "wstrb": Out(data_width // 8), "wvalid": Out(1), "wready": In(1),
            "bresp": In(2), "bvalid": In(1), "bready": Out(1),
            "araddr": Out(addr_width), "arvalid": Out(1), "arready": In(1),
            "rdata": In(data_width), "rresp": In(2), "rvalid": In(1), "rready": Out(1),
        })

    @property
    def addr_width(self):
        return self._addr_width

    @property
    def data_width(self):
        return self._data_width

    def __eq__(self, other):
        return (type(other) is type(self) and other.addr_width == self.addr_width
                and other.data_width == self.data_width)

    def __hash__(self):
        return hash((type(self), self._addr_width, self._data_width))

    def __repr__(self):
        return f"AXI4LiteSignature(addr_width={self._addr_width}, data_width={self._data_width})"


class RequestSignature(wiring.Signature):
    """The bridge's target interface, from the bridge's side: ``valid``, ``write``, ``addr`` (the word
    address, ``addr_width - log2(data_width / 8)`` bits), ``wdata``, ``wstrb`` out; ``ready``, ``rdata``,
    ``error`` in. An access completes on the cycle the target raises ``ready`` (with ``rdata`` for a read
    and ``error`` for SLVERR on that same cycle)."""

    def __init__(self, *, addr_width, data_width=32):
        _check_widths(addr_width, data_width)
        self._addr_width, self._data_width = addr_width, data_width
        super().__init__({
            "valid": Out(1), "write": Out(1), "addr": Out(addr_width - _byte_bits(data_width)),
            "wdata": Out(data_width), "wstrb": Out(data_width // 8),
            "ready": In(1), "rdata": In(data_width), "error": In(1),
        })

    @property
    def addr_width(self):
        return self._addr_width

    @property
    def data_width(self):
        return self._data_width

    def __eq__(self, other):
        return (type(other) is type(self) and other.addr_width == self.addr_width
                and other.data_width == self.data_width)

    def __hash__(self):
        return hash((type(self), self._addr_width, self._data_width))

    def __repr__(self):
        return f"RequestSignature(addr_width={self._addr_width}, data_width={self._data_width})"


class AXI4LiteBridge(wiring.Component):
    """AXI4-Lite subordinate -> one access at a time on ``req``.

    Parameters (keyword-only): ``addr_width`` (byte address bits), ``data_width`` (32 or 64, default 32).

    Ports: ``bus`` (``In(AXI4LiteSignature)``: the subordinate side); ``req`` (``Out(RequestSignature)``).

    Behaviour:

    - AW, W and AR each have a holding register; ``awready``/``wready``/``arready`` are flip-flops, high
      while their register is empty (low during reset and the cycle after it). AW and W may come in
      either order or on the same cycle.
    - A write is issued when both AW and W are held and the B register is free (or frees on this edge);
      a read when AR is held and the R register is free (or frees). With both pending, they alternate.
      Issuing empties the holding registers, so the next request is taken while the access runs.
    - ``req.valid`` and the request fields are registers, stable until the cycle the target raises
      ``req.ready``; ``req.addr`` is the byte address without its ``log2(data_width / 8)`` low bits.
    - On completion, ``bresp``/``rresp`` are SLVERR if ``req.error``, else OKAY; ``rdata`` is ``req.rdata``
      of that cycle. ``bvalid``/``rvalid`` and the response stay until ``bready``/``rready``.
    - With a target that answers on the first cycle and a manager that never stalls: one access every
      2 cycles (writes, reads, or both alternating).
    """

    def __init__(self, *, addr_width, data_width=32):
        _check_widths(addr_width, data_width)
        self._addr_width, self._data_width = addr_width, data_width
        super().__init__({
            "bus": In(AXI4LiteSignature(addr_width=addr_width, data_width=data_width)),
            "req": Out(RequestSignature(addr_width=addr_width, data_width=data_width)),
        })

    @property
    def addr_width(self):
        return self._addr_width

    @property
    def data_width(self):
        return self._data_width

    def elaborate(self, platform):
        m = Module()
        bus, req = self.bus, self.req
        shift = _byte_bits(self._data_width)

        # Holding registers; each ready is a flip-flop equal to "empty after this edge" (init 0: not ready
        # in reset and the first cycle after it).
        aw_full, w_full, ar_full = Signal(), Signal(), Signal()
        aw_addr = Signal(len(req.addr))
        w_data = Signal.like(bus.wdata, name="w_data")
        w_strb = Signal.like(bus.wstrb, name="w_strb")
        ar_addr = Signal(len(req.addr))
        awready, wready, arready = Signal(), Signal(), Signal()
        m.d.comb += [bus.awready.eq(awready), bus.wready.eq(wready), bus.arready.eq(arready)]

        # Response registers (bus outputs).
        bvalid, bresp = Signal(), Signal(2)
        rvalid, rresp, rdata = Signal(), Signal(2), Signal.like(bus.rdata, name="rdata")
        m.d.comb += [bus.bvalid.eq(bvalid), bus.bresp.eq(bresp),
                     bus.rvalid.eq(rvalid), bus.rresp.eq(rresp), bus.rdata.eq(rdata)]

        # The request registers (req outputs).
        valid, write = Signal(), Signal()
        addr = Signal.like(req.addr, name="addr")
        wdata = Signal.like(req.wdata, name="wdata")
        wstrb = Signal.like(req.wstrb, name="wstrb")
        m.d.comb += [req.valid.eq(valid), req.write.eq(write), req.addr.eq(addr),
                     req.wdata.eq(wdata), req.wstrb.eq(wstrb)]

        prefer_read = Signal()  # fairness: the kind that did not go last wins a tie

        aw_take = bus.awvalid & awready
        w_take = bus.wvalid & wready
        ar_take = bus.arvalid & arready
        b_free = ~bvalid | bus.bready
        r_free = ~rvalid | bus.rready
        complete = valid & req.ready
        idle = ~valid
        can_write = idle & aw_full & w_full & b_free
        can_read = idle & ar_full & r_free
        issue_write = Signal()
        issue_read = Signal()
        m.d.comb += [issue_write.eq(can_write & ~(can_read & prefer_read)),
                     issue_read.eq(can_read & ~issue_write)]

        # Next state of the holding registers.
        aw_full_next, w_full_next, ar_full_next = Signal(), Signal(), Signal()
        m.d.comb += [aw_full_next.eq((aw_full & ~issue_write) | aw_take),
                     w_full_next.eq((w_full & ~issue_write) | w_take),
                     ar_full_next.eq((ar_full & ~issue_read) | ar_take)]
        m.d.sync += [aw_full.eq(aw_full_next), w_full.eq(w_full_next), ar_full.eq(ar_full_next),
                     awready.eq(~aw_full_next), wready.eq(~w_full_next), arready.eq(~ar_full_next)]
        with m.If(aw_take):
            m.d.sync += aw_addr.eq(bus.awaddr[shift:])
        with m.If(w_take):
            m.d.sync += [w_data.eq(bus.wdata), w_strb.eq(bus.wstrb)]
        with m.If(ar_take):
            m.d.sync += ar_addr.eq(bus.araddr[shift:])

        # Issue and completion of the access in flight.
        with m.If(issue_write):
            m.d.sync += [valid.eq(1), write.eq(1), addr.eq(aw_addr), wdata.eq(w_data), wstrb.eq(w_strb),
                         prefer_read.eq(1)]
        with m.Elif(issue_read):
            m.d.sync += [valid.eq(1), write.eq(0), addr.eq(ar_addr), wdata.eq(0), wstrb.eq(0),
                         prefer_read.eq(0)]
        with m.Elif(complete):
            m.d.sync += valid.eq(0)

        # Responses: a completion lands only in a free register (issue waited for it to be free).
        with m.If(complete & write):
            m.d.sync += bvalid.eq(1)
            with m.If(req.error):
                m.d.sync += bresp.eq(SLVERR)
            with m.Else():
                m.d.sync += bresp.eq(OKAY)
        with m.Elif(bvalid & bus.bready):
            m.d.sync += bvalid.eq(0)
        with m.If(complete & ~write):
            m.d.sync += [rvalid.eq(1), rdata.eq(req.rdata)]
            with m.If(req.error):
                m.d.sync += rresp.eq(SLVERR)
            with m.Else():
                m.d.sync += rresp.eq(OKAY)
        with m.Elif(rvalid & bus.rready):
            m.d.sync += rvalid.eq(0)
        return m
