"""Simulated throughput of the dot unit's cocotb bench: block pairs per second on Icarus vs Verilator.

    python bench/dot_sim_speed.py [--lanes 1 4 8] [--count 300] [--out out/bench/sim]

For each lane count and simulator: generate the FGMP unit, build it, stream ``count`` random reductions
at full rate (no idle, no back-pressure; ``--exhaustive`` adds the exhaustive code pairs), and report
the wall-clock rate of the simulation loop (cocotb driver, monitor and simulator; stimulus generation, golden model
and build are timed separately). Every run is also checked bit for bit against the golden model: a
mismatch fails the benchmark instead of producing a number.
"""

import argparse
import os
import time
from pathlib import Path

from fgmp.sim.dot import run_dot_bench
from fgmp.sim.runner import SIMULATORS


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lanes", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--simulators", nargs="+", choices=SIMULATORS, default=list(SIMULATORS))
    parser.add_argument("--exhaustive", action="store_true", help="also time the exhaustive suite")
    parser.add_argument("--out", type=Path, default=Path("out/bench/sim"))
    args = parser.parse_args(argv)

    rows = []
    for lanes in args.lanes:
        for simulator in args.simulators:
            start = time.perf_counter()
            result = run_dot_bench({"lanes": lanes, "pipeline_stages": 1}, simulator, args.out,
                                   suites=("exhaustive", "random") if args.exhaustive else ("random",),
                                   count=args.count, idle=0.0, backpressure=0.0)
            total = time.perf_counter() - start
            for report in result.reports:
                rows.append((lanes, simulator, report["suite"], report["block_pairs"], report["cycles"],
                             report["sim_seconds"], report["block_pairs_per_second"],
                             report["block_pairs_per_second"] * lanes * 16, total))

    print(f"FGMP dot unit (B = 16, P = 1), cocotb bench at full rate on {os.cpu_count()} CPU cores; "
          "`python bench/dot_sim_speed.py` regenerates this table.\n")
    print("| L | simulator | suite | block pairs | cycles | sim s | block pairs/s | MACs/s | total s (incl. build) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for lanes, simulator, suite, pairs, cycles, seconds, rate, macs, total in rows:
        print(f"| {lanes} | {simulator} | {suite} | {pairs} | {cycles} | {seconds:.2f} | {rate:.0f} | "
              f"{macs:.3g} | {total:.0f} |")


if __name__ == "__main__":
    main()
