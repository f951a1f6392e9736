"""cocotb bench of the AXI4-Lite bridge (hw/axil.py) on its register-file test top (sim.axil), driven by
cocotbext-axi's AxiLiteMaster.

Configuration comes from FGMP_AXIL_BENCH (JSON written by ``fgmp.sim.axil.run_axil_bench``). Driver:
AxiLiteMaster on the ``bus__*`` ports (prefix ``bus_``; ``rst`` active high), with random pause generators
on all five channels: idle cycles on AW, W and AR, back-pressure on B and R. Model: a Python copy of the
16 registers (fast and slow aliases, the SLVERR range). Scoreboard: each read's bytes and each response
code, JSON report; a second test measures cycles per access without pauses.
"""

import json
import os
import random
import time

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, RisingEdge
from cocotbext.axi import AxiLiteBus, AxiLiteMaster, AxiResp

from .axil import ERROR_BASE, REGISTERS, SLOW_BASE, axil_top
from .scoreboard import Scoreboard
from .streams import CycleCounter

CONFIG_ENV = "FGMP_AXIL_BENCH"
WORKERS = 4  # concurrent managers' tasks; worker w owns the registers k with k % WORKERS == w


def _config():
    return json.loads(os.environ[CONFIG_ENV])


def _pauses(rng, probability):
    while True:
        yield rng.random() < probability


async def _start(dut, *, pauses=None, seed=0):
    master = AxiLiteMaster(AxiLiteBus.from_prefix(dut, "bus_"), dut.clk, dut.rst, reset_active_level=True)
    if pauses is not None:
        rng = random.Random(seed)
        channels = (master.write_if.aw_channel, master.write_if.w_channel, master.write_if.b_channel,
                    master.read_if.ar_channel, master.read_if.r_channel)
        for channel, probability in zip(channels, pauses):
            channel.set_pause_generator(_pauses(random.Random(rng.getrandbits(32)), probability))
    dut.rst.value = 1
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    await ClockCycles(dut.clk, 3)
    dut.rst.value = 0
    await ClockCycles(dut.clk, 2)
    return master


class RegisterModel:
    def __init__(self, data_width):
        self.bytes = data_width // 8
        self.regs = [0] * REGISTERS

    def locate(self, address):
        """(register or None, OKAY/SLVERR) of a byte address."""
        word = address // self.bytes
        if word < SLOW_BASE:
            return word, AxiResp.OKAY
        if word < ERROR_BASE:
            return word - SLOW_BASE, AxiResp.OKAY
        return None, AxiResp.SLVERR

    def write(self, address, data):
        reg, resp = self.locate(address)
        if reg is not None:
            raw = bytearray(self.regs[reg].to_bytes(self.bytes, "little"))
            offset = address % self.bytes
            raw[offset:offset + len(data)] = data
            self.regs[reg] = int.from_bytes(raw, "little")
        return resp

    def read(self, address, length):
        reg, resp = self.locate(address)
        if reg is None:
            return None, resp
        offset = address % self.bytes
        return self.regs[reg].to_bytes(self.bytes, "little")[offset:offset + length], resp


def _address(rng, worker, nbytes, words):
    """A byte address in one of the three ranges: a register this worker owns (fast or slow alias), or
    the SLVERR range."""
    kind = rng.choices(("fast", "slow", "error"), weights=(6, 3, 1))[0]
    if kind == "error":
        word = rng.randrange(ERROR_BASE, words)
    else:
        word = rng.randrange(worker, REGISTERS, WORKERS) + (SLOW_BASE if kind == "slow" else 0)
    offset = rng.randrange(nbytes)
    length = rng.randint(1, nbytes - offset)
    if rng.random() < 0.4:  # whole words often
        offset, length = 0, nbytes
    return word * nbytes + offset, length


async def _worker(master, model, scoreboard, rng, worker, count, nbytes, words, stats):
    for index in range(count):
        address, length = _address(rng, worker, nbytes, words)
        if rng.random() < 0.5:
            data = bytes(rng.getrandbits(8) for _ in range(length))
            result = await master.write(address, data)
            want = model.write(address, data)
            scoreboard.compare({"worker": worker, "index": index, "write": hex(address), "data": data.hex()},
                               int(result.resp), int(want))
            stats["writes"] += 1
            stats["partial"] += length != nbytes
        else:
            result = await master.read(address, length)
            want_data, want = model.read(address, length)
            got = (int(result.resp), result.data.hex() if want_data is not None else None)
            scoreboard.compare({"worker": worker, "index": index, "read": hex(address), "length": length},
                               got, (int(want), want_data.hex() if want_data is not None else None))
            stats["reads"] += 1
        stats["slverr"] += want == AxiResp.SLVERR


@cocotb.test()
async def random_accesses(dut):
    """Random reads and writes (partial strobes, all three ranges) from WORKERS concurrent tasks, with
    idle cycles on AW/W/AR and back-pressure on B/R."""
    config = _config()
    rng = random.Random(config["seed"])
    nbytes = config["data_width"] // 8
    words = (1 << config["addr_width"]) // nbytes
    master = await _start(dut, pauses=(0.3, 0.3, 0.4, 0.3, 0.4), seed=rng.getrandbits(32))
    counter = CycleCounter(dut.clk)
    cocotb.start_soon(counter.run())
    model = RegisterModel(config["data_width"])
    scoreboard = Scoreboard(f"{axil_top()}_random")
    stats = dict(writes=0, reads=0, partial=0, slverr=0)
    per_worker = config["transactions"] // WORKERS
    start = time.perf_counter()
    tasks = [cocotb.start_soon(_worker(master, model, scoreboard, random.Random(rng.getrandbits(32)), w,
                                       per_worker, nbytes, words, stats)) for w in range(WORKERS)]
    for task in tasks:
        await task
    # Every register read back at the end, through the fast range.
    for reg in range(REGISTERS):
        result = await master.read(reg * nbytes, nbytes)
        scoreboard.compare({"final": reg}, (int(result.resp), result.data.hex()),
                           (int(AxiResp.OKAY), model.regs[reg].to_bytes(nbytes, "little").hex()))
    seconds = time.perf_counter() - start
    scoreboard.write_report(suite="random", transactions=stats["writes"] + stats["reads"], **stats,
                            cycles=counter.cycle, sim_seconds=seconds)
    scoreboard.assert_clean()
    assert min(stats["writes"], stats["reads"], stats["partial"], stats["slverr"]) > 0, stats


async def _timed(dut, counter, coroutines):
    await RisingEdge(dut.clk)
    first = counter.cycle
    tasks = [cocotb.start_soon(c) for c in coroutines]
    results = [await task for task in tasks]
    return results, counter.cycle - first


@cocotb.test()
async def throughput(dut):
    """Cycles per access without pauses, fast range: back-to-back writes, back-to-back reads, both."""
    config = _config()
    nbytes = config["data_width"] // 8
    master = await _start(dut)
    counter = CycleCounter(dut.clk)
    cocotb.start_soon(counter.run())
    scoreboard = Scoreboard(f"{axil_top()}_throughput")
    n = 64
    values = [random.Random(k).getrandbits(8 * nbytes) for k in range(REGISTERS)]
    _, write_cycles = await _timed(dut, counter, [
        master.write((k % REGISTERS) * nbytes, values[k % REGISTERS].to_bytes(nbytes, "little")) for k in range(n)])
    results, read_cycles = await _timed(dut, counter, [master.read((k % REGISTERS) * nbytes, nbytes) for k in range(n)])
    for k, result in enumerate(results):
        scoreboard.compare({"read": k}, (int(result.resp), result.data.hex()),
                           (int(AxiResp.OKAY), values[k % REGISTERS].to_bytes(nbytes, "little").hex()))
    coroutines = []
    for k in range(n // 2):
        coroutines.append(master.write((k % REGISTERS) * nbytes, values[k % REGISTERS].to_bytes(nbytes, "little")))
        coroutines.append(master.read(((k + 8) % REGISTERS) * nbytes, nbytes))
    results, mixed_cycles = await _timed(dut, counter, coroutines)
    for k, result in enumerate(results):
        if k % 2:
            reg = (k // 2 + 8) % REGISTERS
            scoreboard.compare({"mixed read": k}, (int(result.resp), result.data.hex()),
                               (int(AxiResp.OKAY), values[reg].to_bytes(nbytes, "little").hex()))
    # The slow range: WAIT_CYCLES more per access.
    _, slow_cycles = await _timed(dut, counter, [master.read((SLOW_BASE + k % REGISTERS) * nbytes, nbytes)
                                                 for k in range(n)])
    report = dict(suite="throughput", accesses=n, write_cycles_per_access=write_cycles / n,
                  read_cycles_per_access=read_cycles / n, mixed_cycles_per_access=mixed_cycles / n,
                  slow_read_cycles_per_access=slow_cycles / n)
    scoreboard.write_report(**report)
    dut._log.info("throughput: %s", report)
    scoreboard.assert_clean()
