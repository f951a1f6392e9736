"""The FGMP engine: the activation quantization unit feeding the dot unit (BF16 activations in, FP32
results out), with the weight blocks streamed alongside each activation block."""

from amaranth import Module, Shape
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .actq import ActivationQuantizer, check_parameters
from .dot import FORMATS, DotUnit, block_layout
from .sidequeue import SideQueue
from .skid import SkidBuffer

__all__ = ["Engine"]

_SKID_SLICE_BITS = 32


class Engine(wiring.Component):
    """Activation quantization unit -> skid buffer -> dot unit (docs/hardware.md, docs/interfaces.md).

    Weights are pre-quantized FGMP blocks streamed next to the activations: each input transfer carries
    one BF16 activation block and the ``lanes`` weight blocks it meets. The weight blocks wait beside the
    activation unit in a queue (``SideQueue``, block RAM) that is pushed when the activation unit takes
    the block and popped when its quantized block leaves, so both reach the dot unit on the same cycle
    without riding through the activation unit's registers; a weight memory or buffer in front of this
    stream is the integrator's choice. Under ``flow_control`` 'stall' both units stall their whole
    pipeline on one enable, whose ready runs combinationally to their input; under 'credit' both run
    their registers free and queue their results in their own result FIFOs. Either way the skid buffer
    between them registers the dot unit's ready, so no ready path crosses both units.

    Parameters (keyword-only): ``lanes``, ``block_size`` (16), ``max_channels`` (4096, the sensitivity
    table and so the longest reduction in elements), ``quantizer_stages`` (1) and ``dot_stages`` (1), the
    two units' pipeline cuts, and ``flow_control`` ('stall' or 'credit', for both units).

    Ports: ``i`` (In stream ``{values: BF16[B], weights: block[lanes], first, last}``), ``o`` (the dot
    unit's output stream), ``config`` (the activation unit's configuration port), ``fp8_blocks``,
    ``nvfp4_blocks``, ``table_overflow`` (the activation unit's status).
    """

    def __init__(self, *, lanes, block_size=16, max_channels=4096, quantizer_stages=1, dot_stages=1,
                 flow_control="stall"):
        # The quantizer validates block size, channels, its stages and the flow control; the dot unit the rest.
        check_parameters(block_size=block_size, max_channels=max_channels, pipeline_stages=quantizer_stages,
                         flow_control=flow_control)
        self._dot = DotUnit(lanes=lanes, block_size=block_size, max_blocks=max_channels // block_size,
                            pipeline_stages=dot_stages, flow_control=flow_control)
        weights = data.ArrayLayout(block_layout(FORMATS, block_size), lanes)
        self._quantizer = ActivationQuantizer(block_size=block_size, max_channels=max_channels,
                                              pipeline_stages=quantizer_stages, flow_control=flow_control)
        # At most latency blocks are inside the activation unit under stall (one per register), and at
        # most result_entries = latency + 1 under credit (one credit each).
        # A result that can leave on the edge after its block was taken (latency 1, P = 0) needs the
        # queue's asynchronous read.
        self._weights = SideQueue(shape=weights, depth=self._quantizer.latency + 1,
                                  registered_read=self._quantizer.latency > 1)
        # One control copy per 32 bits of the skid buffer's payload: its registers sit beside the lanes'
        # decoders across the die, and one shared handshake reached all of their enables over one net
        # (docs/hardware.md, the engine).
        skid_width = Shape.cast(self._dot.i.payload.shape()).width
        self._skid = SkidBuffer(shape=self._dot.i.payload.shape(), slices=-(-skid_width // _SKID_SLICE_BITS))
        # The parts are elaborated whenever the engine is; an engine built and never elaborated (to read
        # its latency or check its parameters) warns once for itself, not once per part.
        for part in (self._dot, self._quantizer, self._weights, self._skid):
            part._MustUse__silence = True
        in_layout = data.StructLayout({"values": data.ArrayLayout(16, block_size), "weights": weights,
                                       "first": 1, "last": 1})
        super().__init__({
            "i": In(stream.Signature(in_layout)),
            "o": Out(stream.Signature(self._dot.o.payload.shape())),
            "config": In(self._quantizer.config.shape()),
            "fp8_blocks": Out(32),
            "nvfp4_blocks": Out(32),
            "table_overflow": Out(1),
        })

    @property
    def lanes(self):
        return self._dot.lanes

    @property
    def block_size(self):
        return self._dot.block_size

    @property
    def max_channels(self):
        return self._quantizer.max_channels

    @property
    def flow_control(self):
        return self._quantizer.flow_control

    @property
    def latency(self):
        """Cycles from the edge that takes a reduction's last block to the earliest edge that can
        transfer its results: the activation unit's, the skid buffer's (1) and the dot unit's."""
        return self._quantizer.latency + self._skid.latency + self._dot.latency

    def elaborate(self, platform):
        m = Module()
        m.submodules.quantizer = quantizer = self._quantizer
        m.submodules.skid = skid = self._skid
        m.submodules.dot = dot = self._dot
        m.submodules.weights = weights = self._weights
        m.d.comb += [
            weights.w_en.eq(self.i.valid & quantizer.i.ready),
            weights.w_data.eq(self.i.payload.weights),
            weights.r_en.eq(quantizer.o.valid & skid.i.ready),
            quantizer.i.valid.eq(self.i.valid),
            self.i.ready.eq(quantizer.i.ready),
            quantizer.i.payload.values.eq(self.i.payload.values),
            quantizer.i.payload.first.eq(self.i.payload.first),
            quantizer.i.payload.last.eq(self.i.payload.last),
            quantizer.config.eq(self.config),
            skid.i.valid.eq(quantizer.o.valid),
            quantizer.o.ready.eq(skid.i.ready),
            skid.i.payload.activation.eq(quantizer.o.payload.block),
            skid.i.payload.weights.eq(weights.r_data),
            skid.i.payload.first.eq(quantizer.o.payload.first),
            skid.i.payload.last.eq(quantizer.o.payload.last),
            self.fp8_blocks.eq(quantizer.fp8_blocks),
            self.nvfp4_blocks.eq(quantizer.nvfp4_blocks),
            self.table_overflow.eq(quantizer.table_overflow),
        ]
        wiring.connect(m, skid.o, dot.i)
        wiring.connect(m, dot.o, wiring.flipped(self.o))
        return m
