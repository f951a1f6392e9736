"""Small helpers that run one RTL unit in amaranth.sim, so tests read `assert rtl_op(x) == golden_op(x)`."""

from amaranth.sim import Simulator

from fgmp.hw import Decoder


def rtl_decode_fields(fmt, codes):
    """{field: [value per code]} from the Decoder for ``fmt``, one code at a time through amaranth.sim."""
    dut = Decoder(format=fmt)
    names = [name for name, _ in fmt.decoded_layout]
    results = {name: [] for name in names}

    async def testbench(ctx):
        for code in codes:
            ctx.set(dut.code, code)
            decoded = ctx.get(dut.decoded)
            for name in names:
                results[name].append(int(getattr(decoded, name)))

    sim = Simulator(dut)
    sim.add_testbench(testbench)
    sim.run()
    return results
