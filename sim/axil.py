"""The AXI4-Lite bridge's test top (a register file behind hw.axil.AXI4LiteBridge) and its cocotb bench
runner (sim/axil_bench.py drives it with cocotbext-axi's AxiLiteMaster)."""

import json
from pathlib import Path

from amaranth import Array, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In

from fgmp.hw.axil import AXI4LiteBridge, AXI4LiteSignature
from fgmp.hw.verilog import write_verilog
from .runner import run_bench

__all__ = ["AXI4LiteRegisterFile", "REGISTERS", "SLOW_BASE", "ERROR_BASE", "WAIT_CYCLES", "axil_top",
           "run_axil_bench"]

# Word addresses (byte address >> log2(data_width / 8)) of the register file's three ranges.
REGISTERS = 16  # words [0, 16): the registers, answered on the first cycle
SLOW_BASE = 16  # words [16, 32): the same registers again, answered after WAIT_CYCLES wait cycles
ERROR_BASE = 32  # words [32, end): SLVERR, no effect
WAIT_CYCLES = 3


class AXI4LiteRegisterFile(wiring.Component):
    """``REGISTERS`` registers of ``data_width`` bits with byte strobes behind an AXI4-Lite bridge.

    Word addresses: [0, 16) the registers (ready at once); [16, 32) the same registers after
    ``wait_cycles`` cycles with ``req.ready`` low; [32, end) SLVERR for reads and writes, which change
    nothing. Parameters (keyword-only): ``addr_width`` (at least 6 word-address bits), ``data_width``,
    ``wait_cycles``. Port: ``bus`` (In AXI4-Lite)."""

    def __init__(self, *, addr_width=8, data_width=32, wait_cycles=WAIT_CYCLES):
        signature = AXI4LiteSignature(addr_width=addr_width, data_width=data_width)
        word_bits = addr_width - (data_width // 8 - 1).bit_length()
        if word_bits < 6:
            raise ValueError(f"The register file needs at least 6 word-address bits, not {word_bits}")
        self._addr_width, self._data_width, self._wait_cycles = addr_width, data_width, wait_cycles
        super().__init__({"bus": In(signature)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.bridge = bridge = AXI4LiteBridge(addr_width=self._addr_width, data_width=self._data_width)
        wiring.connect(m, wiring.flipped(self.bus), bridge.bus)
        req = bridge.req
        regs = [Signal(self._data_width, name=f"reg{k}") for k in range(REGISTERS)]
        waited = Signal(range(self._wait_cycles + 1))
        index = req.addr[:4]
        fast = req.addr < SLOW_BASE
        slow = (req.addr >= SLOW_BASE) & (req.addr < ERROR_BASE)
        ready = Signal()
        with m.If(fast):
            m.d.comb += ready.eq(1)
        with m.Elif(slow):
            m.d.comb += ready.eq(waited == self._wait_cycles)
            with m.If(req.valid):
                m.d.sync += waited.eq(waited + 1)
                with m.If(ready):
                    m.d.sync += waited.eq(0)
        with m.Else():
            m.d.comb += [ready.eq(1), req.error.eq(1)]
        m.d.comb += req.ready.eq(req.valid & ready)
        m.d.comb += req.rdata.eq(Array(regs)[index])
        for k, reg in enumerate(regs):
            with m.If(req.valid & ready & req.write & (fast | slow) & (index == k)):
                for lane in range(self._data_width // 8):
                    with m.If(req.wstrb[lane]):
                        m.d.sync += reg.word_select(lane, 8).eq(req.wdata.word_select(lane, 8))
        return m


def axil_top():
    return "fgmp_axil_regfile"


def run_axil_bench(simulator, build_root, *, transactions=1000, seed=1, testcases=None):
    """Run ``sim/axil_bench.py`` on the register file (32-bit data, 8 address bits) in
    ``build_root/<sim>/<top>``; returns the BenchResult (reports: one per cocotb test)."""
    top = axil_top()
    build_dir = (Path(build_root) / simulator / top).resolve()
    params = dict(addr_width=8, data_width=32, wait_cycles=WAIT_CYCLES)
    source = write_verilog(AXI4LiteRegisterFile(**params), top, build_dir, params=params)
    config = dict(params, transactions=transactions, seed=seed)
    return run_bench(simulator=simulator, sources=[source], top=top, test_module="fgmp.sim.axil_bench",
                     build_dir=build_dir, extra_env={"FGMP_AXIL_BENCH": json.dumps(config)},
                     testcases=testcases)
