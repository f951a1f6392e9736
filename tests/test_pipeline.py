"""Register copies (hw/pipeline.py's ``copies``, the skid buffer's control copies): marked ``keep``, and
kept apart by the flow."""

import re

import pytest
from amaranth import Cat, Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from fgmp.flow.area import synthesize_verilog
from fgmp.hw.pipeline import StallPipeline, copies
from fgmp.hw.skid import SkidBuffer
from fgmp.hw.verilog import write_verilog


class Fanout(wiring.Component):
    """x + 1 registered once per consumer (``copies``) or as plain registers of one value, each added to its
    own input: the smallest case of a value that reaches far-apart logic."""

    def __init__(self, *, use_copies, register=True):
        self._use_copies = use_copies
        self._register = register
        super().__init__({"i": In(stream.Signature(8)), "o": Out(stream.Signature(27)), "b": In(27)})

    def elaborate(self, platform):
        m = Module()
        pipeline = StallPipeline(m, self.i, self.o)
        value = self.i.payload + 1
        if self._use_copies:
            wires = copies(m, value, 3, "x")
        else:
            wires = [Signal(9, name=f"x_plain{k}") for k in range(3)]
            m.d.comb += [wire.eq(value) for wire in wires]
        valid, registered = pipeline.cut(pipeline.input_valid, wires, self._register)
        pipeline.emit(valid, Cat((r + self.b[9 * k:9 * k + 9])[:9] for k, r in enumerate(registered)))
        return m


def _flip_flops(cells):
    return sum(count for cell, count in cells.items() if "DFF" in cell.upper())


def test_copies_are_marked_keep_only_where_a_cut_registers_them(tmp_path):
    registered = write_verilog(Fanout(use_copies=True), "fanout", tmp_path / "registered").read_text()
    assert len(re.findall(r"\(\* keep = 32'd1 \*\)\s*reg \[8:0\] x_copy\d_q", registered)) == 3
    assert re.search(r"\(\* fgmp_copy = 32'd1 \*\)\s*wire \[8:0\] x_copy0;", registered)
    wires = write_verilog(Fanout(use_copies=True, register=False), "fanout", tmp_path / "wires").read_text()
    assert "keep" not in wires  # a kept wire would stop logic from merging across it


def test_the_flow_keeps_registered_copies_apart(tmp_path):
    """Yosys merges registers with equal inputs unless the register cell is marked: the flow marks those
    whose output wire carries ``keep``, so three copies stay three registers."""
    counts = {}
    for use_copies in (False, True):
        workdir = tmp_path / str(use_copies)
        verilog = write_verilog(Fanout(use_copies=use_copies), "fanout", workdir)
        result = synthesize_verilog(verilog, "fanout", "decoder", "generic", workdir, breakdown=False)
        counts[use_copies] = _flip_flops(result.cells)
    assert counts[True] - counts[False] == 2 * 9


@pytest.mark.parametrize("count, error, message", [
    (0, ValueError, "Copies must be at least 1, not 0"),
    (2.0, TypeError, "Copies must be an integer, not 2.0"),
    (True, TypeError, "Copies must be an integer, not True"),
])
def test_copies_parameter_errors(count, error, message):
    with pytest.raises(error, match=f"^{re.escape(message)}$"):
        copies(Module(), Signal(4), count, "x")


def test_the_flow_keeps_the_skid_buffers_control_copies_apart(tmp_path):
    """A 16-bit skid buffer in four parts has four copies of its three control registers: nine flip-flops
    more than in one part, the payload's 32 the same."""
    counts = {}
    for slices in (1, 4):
        workdir = tmp_path / str(slices)
        verilog = write_verilog(SkidBuffer(shape=16, slices=slices), "skid", workdir)
        result = synthesize_verilog(verilog, "skid", "decoder", "generic", workdir, breakdown=False)
        counts[slices] = _flip_flops(result.cells)
    assert counts[1] == 2 * 16 + 3
    assert counts[4] - counts[1] == 3 * 3
