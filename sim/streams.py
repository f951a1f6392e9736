"""Stream-level bench components shared by the cocotb benches: a valid/ready driver with idle cycles,
a monitor with back-pressure that also checks the source's protocol, a cycle counter, and reset."""

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge

__all__ = ["StreamDriver", "StreamMonitor", "CycleCounter", "start_clock_and_reset"]


class StreamDriver:
    """Drives a valid/ready stream: each word waits ``idle``-probability cycles, then stays valid and
    stable until the sink takes it."""

    def __init__(self, clk, stream, *, idle, rng):
        self._clk, self._stream, self._idle, self._rng = clk, stream, idle, rng
        self.accepted_cycles = []

    async def send(self, words, cycle_counter):
        valid, ready, payload = self._stream
        for word in words:
            while self._rng.random() < self._idle:
                valid.value = 0
                await RisingEdge(self._clk)
            valid.value = 1
            payload.value = word
            while True:
                await ReadOnly()  # the handshake as it stands just before the edge
                taken = int(ready.value)
                if taken:
                    self.accepted_cycles.append(cycle_counter.cycle)
                await RisingEdge(self._clk)
                if taken:
                    break
        valid.value = 0


class StreamMonitor:
    """Sinks a valid/ready stream, deasserting ready with probability ``backpressure`` each cycle.

    Also checks the source's side of the protocol: while stalled, valid stays high and the payload
    stable; after the expected count, ``drain`` cycles pass without another valid. Gives up with an
    assertion after ``cycle_limit`` cycles instead of waiting forever for a lost result."""

    def __init__(self, clk, stream, *, backpressure, rng, cycle_limit, drain=8):
        self._clk, self._stream, self._backpressure, self._rng = clk, stream, backpressure, rng
        self._cycle_limit, self._drain = cycle_limit, drain
        self.delivered_cycles = []

    async def receive(self, count, cycle_counter):
        valid, ready, payload = self._stream
        words, held = [], None
        for cycle in range(self._cycle_limit):
            done = len(words) == count
            take = 1 if done else int(self._rng.random() >= self._backpressure)
            ready.value = take
            await ReadOnly()
            is_valid = int(valid.value)
            if held is not None:
                assert is_valid and int(payload.value) == held, "o dropped valid or changed payload while stalled"
            held = int(payload.value) if is_valid and not take else None
            if done:
                assert not is_valid, "the unit produced more results than reductions"
                if cycle_counter.cycle - self.delivered_cycles[-1] > self._drain:
                    return words
            elif take and is_valid:
                words.append(int(payload.value))
                self.delivered_cycles.append(cycle_counter.cycle)
            await RisingEdge(self._clk)
        raise AssertionError(f"{len(words)} of {count} results after {self._cycle_limit} cycles")


class CycleCounter:
    def __init__(self, clk):
        self._clk = clk
        self.cycle = 0

    async def run(self):
        while True:
            await RisingEdge(self._clk)
            self.cycle += 1


async def start_clock_and_reset(dut, idle_inputs):
    """Start a 100 MHz clock on ``dut.clk`` and hold ``dut.rst`` for two cycles, with ``idle_inputs``
    (valid/ready signals) low."""
    for signal in idle_inputs:
        signal.value = 0
    dut.rst.value = 1
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    await ClockCycles(dut.clk, 2)
    dut.rst.value = 0
    await RisingEdge(dut.clk)
