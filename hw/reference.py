"""Reference circuits of known energy, measured by the same energy proxy as the dot units to put the
proxy on a scale in picojoules (fgmp/energy.py, docs/results.md "Energy model").

A reference takes two random operands every cycle into registers, computes one integer operation on
them combinationally and registers the result: one operation per cycle, like one published figure."""

from amaranth import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .pipeline import check_count

__all__ = ["ReferenceCircuit", "OPERATIONS"]

OPERATIONS = ("multiply", "add")


class ReferenceCircuit(wiring.Component):
    """``operation`` ('multiply' or 'add') of two unsigned ``width``-bit integers.

    Ports: ``a``, ``b`` (In, ``width``), ``result`` (Out: the registered result, 2 x width bits for a
    multiply, width + 1 for an add). Signals: ``a_q``, ``b_q`` (operand registers), ``result_comb``
    (the operation's output, the one named wire of its gates), ``result`` (its register)."""

    def __init__(self, *, operation, width):
        if operation not in OPERATIONS:
            raise ValueError(f"Operation must be one of {', '.join(OPERATIONS)}, not {operation!r}")
        check_count("Width", width, 1)
        self._operation, self._width = operation, width
        result_bits = 2 * width if operation == "multiply" else width + 1
        super().__init__({"a": In(width), "b": In(width), "result": Out(result_bits)})

    @property
    def operation(self):
        return self._operation

    @property
    def width(self):
        return self._width

    def elaborate(self, platform):
        m = Module()
        a_q, b_q = Signal(self._width, name="a_q"), Signal(self._width, name="b_q")
        result_comb = Signal(len(self.result), name="result_comb")
        m.d.sync += [a_q.eq(self.a), b_q.eq(self.b), self.result.eq(result_comb)]
        m.d.comb += result_comb.eq(a_q * b_q if self._operation == "multiply" else a_q + b_q)
        return m
