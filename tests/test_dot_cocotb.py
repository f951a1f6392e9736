"""cocotb benches of the generated dot unit on Icarus and on Verilator (no skips: a missing simulator is a
failure). One build per configuration runs every suite it lists: the exhaustive element code pairs at
full rate (also checking II = 1 and the latency) and random reductions under idle cycles and
back-pressure. Configurations cover L = 1, 4 and 8, pipeline depths 0..3 and the deepest (amaranth.sim
runs every depth in tests/test_dot_rtl.py), the three format variants, the split datapath and credit flow control; each simulator runs the exhaustive FGMP, FP4-only and split suites. To stay inside
CI's time, each 8-lane unit runs on one simulator (the exhaustive suite takes Icarus 85 s at L = 8;
`python bench/dot_sim_speed.py --lanes 8 --exhaustive` runs it on both) and the FP8-only unit on Icarus
only."""

import pytest

from fgmp.hw.dot import MAX_PIPELINE_STAGES
from fgmp.sim.dot import run_dot_bench
from fgmp.sim.runner import SIMULATORS

CONFIGURATIONS = {
    "fgmp_l8_p1": ({"lanes": 8, "pipeline_stages": 1}, ("exhaustive", "random"), ("verilator",)),
    # The deepest pipeline (every cut of hw/dot.py's CUTS), exhaustive on one simulator, random on both.
    "fgmp_l1_deepest": ({"lanes": 1, "pipeline_stages": MAX_PIPELINE_STAGES}, ("exhaustive", "random"), ("icarus",)),
    "fgmp_l1_deepest_random": ({"lanes": 1, "pipeline_stages": MAX_PIPELINE_STAGES}, ("random",), ("verilator",)),
    "fp8_l4_p0": ({"lanes": 4, "pipeline_stages": 0, "formats": ("fp8",)}, ("random",), ("icarus",)),
    "nvfp4_l4_p2": ({"lanes": 4, "pipeline_stages": 2, "formats": ("nvfp4",)}, ("exhaustive", "random"),
                    SIMULATORS),
    # The split datapath: L = 1 / 4 / 8 and P = 0..3 between them, the exhaustive suite on each simulator.
    "split_l1_p0": ({"lanes": 1, "pipeline_stages": 0, "datapath": "split"}, ("exhaustive", "random"), ("icarus",)),
    "split_l4_p1": ({"lanes": 4, "pipeline_stages": 1, "datapath": "split"}, ("random",), ("icarus",)),
    "split_l4_p3": ({"lanes": 4, "pipeline_stages": 3, "datapath": "split"}, ("exhaustive", "random"),
                    ("verilator",)),
    "split_l8_p2": ({"lanes": 8, "pipeline_stages": 2, "datapath": "split"}, ("random",), ("icarus",)),
    # Credit flow control at the 4-lane timing point (the deepest pipeline), random under stalls on both.
    "fgmp_credit_l4_deepest": ({"lanes": 4, "pipeline_stages": MAX_PIPELINE_STAGES, "flow_control": "credit"},
                               ("random",), SIMULATORS),
}
# Element code pairs of all enabled pairings: FP8xFP8 + FP4xFP4 + both mixed orders.
FGMP_PAIRS = 256 * 256 + 16 * 16 + 2 * 16 * 256
EXHAUSTIVE_PAIRS = {"fgmp": FGMP_PAIRS, "split": FGMP_PAIRS, "nvfp4": 16 * 16}
CASES = [(name, simulator) for name, (_, _, simulators) in CONFIGURATIONS.items() for simulator in simulators]


def test_every_simulator_runs_the_exhaustive_fgmp_and_fp4_suites():
    for simulator in SIMULATORS:
        for variant in ("fgmp", "nvfp4", "split"):
            assert any(name.startswith(variant) and "exhaustive" in CONFIGURATIONS[name][1]
                       for name, sim in CASES if sim == simulator)


@pytest.mark.cocotb
@pytest.mark.parametrize("name, simulator", CASES)
def test_dot_bench(name, simulator, tmp_path_factory, bench_reports):
    params, suites, _ = CONFIGURATIONS[name]
    result = run_dot_bench(params, simulator, tmp_path_factory.mktemp("cocotb"), suites=suites, count=120,
                           max_reduction=40, idle=0.25, backpressure=0.3)
    assert result.tests == len(suites) and result.failures == 0
    assert [report["suite"] for report in result.reports] == list(suites)
    for report in result.reports:
        bench_reports.append((simulator, report))
        assert report["mismatches"] == 0 and report["overflow_flags"] == 0
        assert report["checked"] == report["reductions"] * params["lanes"]
        if report["suite"] == "exhaustive":
            assert report["element_code_pairs"] == EXHAUSTIVE_PAIRS[name.split("_")[0]]
            assert report["accept_span"] == report["block_pairs"]  # one block pair per cycle
        else:
            assert report["reductions"] == 120 and report["block_pairs"] > 120
