"""The AXI4-Lite bridge (hw/axil.py): parameter checks, its signature and Verilog ports, amaranth.sim runs
against a toy target (random AW/W order, idle cycles, back-pressure, wait states, errors; AXI rules checked
every cycle), and the cocotb bench with cocotbext-axi's AxiLiteMaster on Icarus and Verilator."""

import random

import pytest
from amaranth import Shape
from amaranth.lib.wiring import Flow
from amaranth.sim import Simulator

from fgmp.hw.axil import OKAY, SLVERR, AXI4LiteBridge, AXI4LiteSignature, RequestSignature
from fgmp.hw.verilog import lint, write_verilog
from fgmp.sim.axil import AXI4LiteRegisterFile, run_axil_bench
from fgmp.sim.runner import SIMULATORS

AXI_MEMBERS = {
    "awaddr": Flow.Out, "awvalid": Flow.Out, "awready": Flow.In,
    "wdata": Flow.Out, "wstrb": Flow.Out, "wvalid": Flow.Out, "wready": Flow.In,
    "bresp": Flow.In, "bvalid": Flow.In, "bready": Flow.Out,
    "araddr": Flow.Out, "arvalid": Flow.Out, "arready": Flow.In,
    "rdata": Flow.In, "rresp": Flow.In, "rvalid": Flow.In, "rready": Flow.Out,
}


# Parameters and interface.

@pytest.mark.parametrize("factory", [AXI4LiteSignature, RequestSignature, AXI4LiteBridge])
def test_parameter_validation(factory):
    with pytest.raises(ValueError, match=r"^Data width must be 32 or 64, not 16$"):
        factory(addr_width=8, data_width=16)
    with pytest.raises(ValueError, match=r"^Data width must be 32 or 64, not True$"):
        factory(addr_width=8, data_width=True)
    with pytest.raises(TypeError, match=r"^Address width must be an integer, not '8'$"):
        factory(addr_width="8")
    with pytest.raises(ValueError, match=r"^Address width must be at least 2 for 32-bit data, not 1$"):
        factory(addr_width=1)
    with pytest.raises(ValueError, match=r"^Address width must be at least 3 for 64-bit data, not 2$"):
        factory(addr_width=2, data_width=64)
    factory(addr_width=2)
    factory(addr_width=3, data_width=64)


def test_register_file_validation():
    with pytest.raises(ValueError, match=r"^The register file needs at least 6 word-address bits, not 5$"):
        AXI4LiteRegisterFile(addr_width=8, data_width=64)


@pytest.mark.parametrize("data_width", [32, 64])
def test_signatures(data_width):
    sig = AXI4LiteSignature(addr_width=12, data_width=data_width)
    assert {name: member.flow for name, member in sig.members.items()} == AXI_MEMBERS
    widths = {name: Shape.cast(member.shape).width for name, member in sig.members.items()}
    assert widths["awaddr"] == widths["araddr"] == 12
    assert widths["wdata"] == widths["rdata"] == data_width and widths["wstrb"] == data_width // 8
    assert widths["bresp"] == widths["rresp"] == 2
    assert sig == AXI4LiteSignature(addr_width=12, data_width=data_width) != AXI4LiteSignature(addr_width=13)
    bridge = AXI4LiteBridge(addr_width=12, data_width=data_width)
    assert bridge.signature.members["bus"].signature == sig.flip()
    assert bridge.signature.members["bus"].flow == Flow.In
    req = bridge.signature.members["req"]
    assert req.flow == Flow.Out and req.signature == RequestSignature(addr_width=12, data_width=data_width)
    flows = {name: (member.flow, Shape.cast(member.shape).width) for name, member in req.signature.members.items()}
    shift = 2 if data_width == 32 else 3
    assert flows == {"valid": (Flow.Out, 1), "write": (Flow.Out, 1), "addr": (Flow.Out, 12 - shift),
                     "wdata": (Flow.Out, data_width), "wstrb": (Flow.Out, data_width // 8),
                     "ready": (Flow.In, 1), "rdata": (Flow.In, data_width), "error": (Flow.In, 1)}


def test_verilog_ports_and_lint(tmp_path):
    path = write_verilog(AXI4LiteBridge(addr_width=8), "axil_bridge", tmp_path)
    lint(path, "axil_bridge")
    header = path.read_text().split(");", 1)[0]
    for name in [*(f"bus__{m}" for m in AXI_MEMBERS), "req__valid", "req__addr", "req__ready", "clk", "rst"]:
        assert name in header
    top = write_verilog(AXI4LiteRegisterFile(), "fgmp_axil_regfile", tmp_path)
    lint(top, "fgmp_axil_regfile")


# amaranth.sim: a randomized manager against a toy target.

def _simulate(*, data_width=32, addr_width=10, writes=(), reads=(), seed=0, idle=0.0, backpressure=0.0,
              waits=(0,), error_bit=None, target_log=None):
    """Drive ``writes`` [(byte address, data, strb)] and ``reads`` [byte address] through a bridge: AW, W
    and AR from independent processes with random idle cycles (so AW and W come in any order), B and R
    refused with probability ``backpressure``. The toy target keeps one word per address, waits a random
    choice of ``waits`` cycles per access and answers SLVERR where the word address has ``error_bit`` set.
    Checks the AXI handshake rules and the req stability rule every cycle; returns
    (B responses, R responses [(rresp, rdata)], the target's completions, the cycle count)."""
    dut = AXI4LiteBridge(addr_width=addr_width, data_width=data_width)
    bus, req = dut.bus, dut.req
    shift = (data_width // 8 - 1).bit_length()
    rng = random.Random(seed)
    rngs = [random.Random(rng.getrandbits(32)) for _ in range(6)]
    b_got, r_got, done = [], [], []
    state = {"cycles": 0}
    memory = {}
    completions = [] if target_log is None else target_log
    limit = 100 + 20 * (len(writes) + len(reads)) * (1 + max(waits)) / (1 - backpressure) / (1 - idle)

    def idle_cycles(r):
        n = 0
        while r.random() < idle:
            n += 1
        return n

    async def channel(ctx, r, valid, ready, items):
        for payload in items:
            for _ in range(idle_cycles(r)):
                await ctx.tick()
            before = ctx.get(ready)
            ctx.set(valid, 1)
            for signal, value in payload:
                ctx.set(signal, value)
            assert ctx.get(ready) == before, "ready depends combinationally on valid"
            await ctx.tick().until(ready)
            ctx.set(valid, 0)

    async def aw(ctx):
        await channel(ctx, rngs[0], bus.awvalid, bus.awready, [[(bus.awaddr, a)] for a, _, _ in writes])

    async def w(ctx):
        await channel(ctx, rngs[1], bus.wvalid, bus.wready,
                      [[(bus.wdata, d), (bus.wstrb, s)] for _, d, s in writes])

    async def ar(ctx):
        await channel(ctx, rngs[2], bus.arvalid, bus.arready, [[(bus.araddr, a)] for a in reads])

    async def responses(ctx, r, valid, ready, fields, got, count):
        held = None
        while len(got) < count:
            assert state["cycles"] < limit, f"{len(got)} of {count} responses after {limit} cycles"
            take = r.random() >= backpressure
            ctx.set(ready, take)
            _, _, v, *values = await ctx.tick().sample(valid, *fields)
            if held is not None:
                assert v and tuple(values) == held, "a response changed or vanished before it was taken"
            if v and take:
                got.append(values[0] if len(values) == 1 else tuple(values))
                held = None
            elif v:
                held = tuple(values)
        ctx.set(ready, 0)
        done.append(True)

    async def b(ctx):
        await responses(ctx, rngs[3], bus.bvalid, bus.bready, (bus.bresp,), b_got, len(writes))

    async def rch(ctx):
        await responses(ctx, rngs[4], bus.rvalid, bus.rready, (bus.rresp, bus.rdata), r_got, len(reads))

    async def target(ctx):
        r = rngs[5]
        pending = None  # the fields of the access waiting (valid & ~ready on the last cycle)
        remaining = 0
        assert not ctx.get(bus.awready) and not ctx.get(bus.wready) and not ctx.get(bus.arready)
        while True:
            fields = (ctx.get(req.write), ctx.get(req.addr), ctx.get(req.wdata), ctx.get(req.wstrb))
            ready = 0
            if ctx.get(req.valid):
                if pending is None:
                    pending, remaining = fields, r.choice(waits)
                assert fields == pending, "req changed while valid & ~ready"
                if remaining == 0:
                    ready = 1
                    write, addr, wdata, wstrb = fields
                    error = error_bit is not None and (addr >> error_bit) & 1
                    old = memory.get(addr, (addr * 0x9E3779B1) & ((1 << data_width) - 1))
                    rdata = 0 if write else old
                    if write and not error:
                        mask = sum(0xFF << 8 * k for k in range(data_width // 8) if wstrb >> k & 1)
                        memory[addr] = (old & ~mask) | (wdata & mask)
                    ctx.set(req.rdata, rdata)
                    ctx.set(req.error, error)
                    completions.append((state["cycles"], write, addr, wdata if write else None,
                                        wstrb if write else None, error, rdata))
                    pending = None
                else:
                    remaining -= 1
            else:
                assert pending is None
            ctx.set(req.ready, ready)
            await ctx.tick()
            state["cycles"] += 1

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    for bench in (aw, w, ar):
        sim.add_testbench(bench, background=True)
    sim.add_testbench(target, background=True)
    sim.add_testbench(b)
    sim.add_testbench(rch)
    sim.run()
    assert len(done) == 2
    return b_got, r_got, completions, state["cycles"], shift


def _random_traffic(rng, count, addr_width, data_width):
    nbytes = data_width // 8
    writes = [(rng.randrange(1 << addr_width) & ~(nbytes - 1) | rng.randrange(nbytes),
               rng.getrandbits(data_width), rng.getrandbits(nbytes)) for _ in range(count)]
    reads = [rng.randrange(1 << addr_width) for _ in range(count)]
    return writes, reads


@pytest.mark.parametrize("data_width", [32, 64])
@pytest.mark.parametrize("seed", [1, 2])
def test_random_traffic_against_toy_target(data_width, seed):
    rng = random.Random(seed)
    addr_width = 10
    shift = (data_width // 8 - 1).bit_length()
    writes, reads = _random_traffic(rng, 150, addr_width, data_width)
    b_got, r_got, log, _, _ = _simulate(
        data_width=data_width, addr_width=addr_width, writes=writes, reads=reads, seed=seed, idle=0.5,
        backpressure=0.4, waits=(0, 0, 1, 3), error_bit=addr_width - shift - 1)
    target_writes = [entry for entry in log if entry[1]]
    target_reads = [entry for entry in log if not entry[1]]
    # Every write reached the target once, in order, with its word address, data and strobes.
    assert [(addr, wdata, wstrb) for _, _, addr, wdata, wstrb, _, _ in target_writes] == \
        [(a >> shift, d, s) for a, d, s in writes]
    assert [addr for _, _, addr, *_ in target_reads] == [a >> shift for a in reads]
    # The responses, in order, carry the target's error and read data.
    assert b_got == [SLVERR if error else OKAY for *_, error, _ in target_writes]
    assert r_got == [(SLVERR if error else OKAY, rdata) for *_, error, rdata in target_reads]
    assert OKAY in b_got and SLVERR in b_got
    assert {resp for resp, _ in r_got} == {OKAY, SLVERR}


def test_aw_and_w_in_either_order():
    """AW long before W, W long before AW, and both on the same cycle all make the same writes."""
    writes = [(4 * k, 0x1000 + k, 0xF) for k in range(40)]
    for seed in range(6):
        _, _, log, _, _ = _simulate(writes=writes, seed=seed, idle=0.8)
        assert [(addr, wdata) for _, _, addr, wdata, *_ in log] == [(k, 0x1000 + k) for k in range(40)]


def test_throughput_and_fair_alternation():
    """No idle cycles, no back-pressure, a target that answers at once: one access every 2 cycles, and
    pending reads and writes alternate."""
    n = 64
    writes = [(4 * (k % 16), k, 0xF) for k in range(n)]
    reads = [4 * (k % 16) for k in range(n)]
    _, _, log, _, _ = _simulate(writes=writes)
    assert log[-1][0] - log[0][0] == 2 * (n - 1)
    _, _, log, _, _ = _simulate(reads=reads)
    assert log[-1][0] - log[0][0] == 2 * (n - 1)
    _, _, log, _, _ = _simulate(writes=writes, reads=reads)
    assert log[-1][0] - log[0][0] == 2 * (2 * n - 1)
    kinds = [entry[1] for entry in log]
    assert all(a != b for a, b in zip(kinds, kinds[1:])), kinds
    # A target with 3 wait cycles: 2 + 3 cycles per access.
    _, _, log, _, _ = _simulate(writes=writes, waits=(3,))
    assert log[-1][0] - log[0][0] == 5 * (n - 1)


def test_responses_held_under_backpressure():
    """A manager that almost never takes B or R still gets every response (the checks in _simulate
    fail on a response that changes or disappears before it is taken)."""
    rng = random.Random(7)
    writes, reads = _random_traffic(rng, 40, 10, 32)
    b_got, r_got, log, _, _ = _simulate(writes=writes, reads=reads, backpressure=0.9, error_bit=7)
    assert len(b_got) == len(writes) and len(r_got) == len(reads) and len(log) == 80


# The cocotb bench: cocotbext-axi's AxiLiteMaster on the register-file top.

@pytest.fixture(scope="module", params=SIMULATORS)
def axil_bench(request, tmp_path_factory):
    return request.param, run_axil_bench(request.param, tmp_path_factory.mktemp("cocotb"))


@pytest.mark.cocotb
def test_axil_bench_random(axil_bench, bench_reports):
    simulator, result = axil_bench
    assert result.tests == 2 and result.failures == 0
    report = next(r for r in result.reports if r["suite"] == "random")
    bench_reports.append((simulator, report))
    assert report["mismatches"] == 0 and report["transactions"] == 1000
    assert report["checked"] == 1000 + 16
    assert min(report["writes"], report["reads"], report["partial"], report["slverr"]) > 0


@pytest.mark.cocotb
def test_axil_bench_throughput(axil_bench):
    simulator, result = axil_bench
    report = next(r for r in result.reports if r["suite"] == "throughput")
    assert report["mismatches"] == 0
    for kind in ("write", "read", "mixed"):
        assert report[f"{kind}_cycles_per_access"] <= 2.1, report
    assert report["slow_read_cycles_per_access"] <= 5.1, report
