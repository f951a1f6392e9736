"""A registered wrapper that lets a unit with hundreds of ports be placed and routed on a real package.

Every input bit of the unit (payload, valid, ready, config) comes from its own flip-flop of a shift
register fed by an LFSR, and every output bit goes into a flip-flop and then a registered XOR tree
of fan-in 4 down to one pin. Synthesis cannot prove any input constant or any output unused, so
nothing of the unit is optimized away; and every harness path is at most one LUT deep between
flip-flops, so the harness sets the clock period only for units shallower than that (the decoders).
What it adds (measured, see ``fgmp.flow.timing``): one flip-flop per unit input bit and per unit
output bit, the 32-bit LFSR, and the reduction tree (about one LUT4 and one flip-flop per three
output bits).
"""

from amaranth import Cat, Module, Signal, Value
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["TimingHarness", "HARNESS_PORTS"]

# Top-level ports of the harness (besides clk and rst); the constraint files name exactly these.
HARNESS_PORTS = ("out",)
_LFSR_WIDTH = 32
_LFSR_TAPS = (32, 22, 2, 1)  # x^32 + x^22 + x^2 + x + 1, maximal length


def _port_bits(component, flow):
    return [Value.cast(value) for _, member, value in component.signature.flatten(component) if member.flow == flow]


class TimingHarness(wiring.Component):
    """``unit`` between an LFSR-fed input register chain and a registered XOR reduction to ``out``."""

    out: Out(1)

    def __init__(self, unit):
        self._unit = unit
        super().__init__()

    @property
    def input_bits(self):
        return sum(len(v) for v in _port_bits(self._unit, In))

    @property
    def output_bits(self):
        return sum(len(v) for v in _port_bits(self._unit, Out))

    def elaborate(self, platform):
        m = Module()
        m.submodules.dut = dut = self._unit

        lfsr = Signal(_LFSR_WIDTH, init=1)
        feedback = 0
        for tap in _LFSR_TAPS:
            feedback ^= lfsr[tap - 1]
        m.d.sync += lfsr.eq(Cat(feedback, lfsr[:-1]))
        inputs = Cat(*_port_bits(dut, In))
        chain = Signal(len(inputs))
        m.d.sync += chain.eq(Cat(lfsr[-1], chain[:-1]))
        m.d.comb += inputs.eq(chain)

        level = Signal(self.output_bits)
        m.d.sync += level.eq(Cat(*_port_bits(dut, Out)))
        while len(level) > 1:
            reduced = Signal((len(level) + 3) // 4)
            m.d.sync += [reduced[k].eq(level[4 * k: 4 * k + 4].xor()) for k in range(len(reduced))]
            level = reduced
        m.d.comb += self.out.eq(level)
        return m
