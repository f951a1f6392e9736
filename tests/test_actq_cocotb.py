"""cocotb benches of the generated activation quantization unit and engine on Icarus and Verilator (no
skips): random BF16 blocks across the exponent range with NaN/Inf, several configurations (k at both
extremes, thresholds at score quantiles, and T just below / equal to / just above a block's score)
written through the configuration port, idle cycles and back-pressure; the engine on a random layer,
FP32 results bit for bit."""

import pytest

import random

import torch

from fgmp.golden import quantize_activations
from fgmp.hw.actq import MAX_PIPELINE_STAGES
from fgmp.hw.dot import MAX_PIPELINE_STAGES as DOT_MAX_PIPELINE_STAGES
from fgmp.sim.actq import run_engine_bench, run_quantizer_bench
from fgmp.sim.actq_stimuli import random_bf16, random_configs
from fgmp.sim.runner import SIMULATORS


def test_bench_configurations_straddle_the_threshold():
    """The bench's last three configurations put one block's score just above, exactly at and just below
    T (the rule is score > T), so the RTL compare is checked at its edge, not only far from it."""
    rng = random.Random(1)
    x = random_bf16(rng, (8, 64), nonfinite=0.02)
    configs = random_configs(rng, x, count=6)
    margins = []
    for config in configs[3:]:
        scores = quantize_activations(x, config).scores.reshape(-1)
        margin = sorted((scores - config.threshold).tolist(), key=abs)[0]
        assert abs(margin) <= config.threshold * 2.0**-23  # within one FP32 step of T
        margins.append(margin)
    below, equal, above = margins
    assert below > 0 and above < 0
    assert equal == 0
    assert configs[3].sensitivities is configs[5].sensitivities


@pytest.mark.cocotb
@pytest.mark.parametrize("flow_control", ["stall", "credit"])
@pytest.mark.parametrize("simulator", SIMULATORS)
def test_quantizer_bench(simulator, flow_control, tmp_path_factory, bench_reports):
    """The deepest pipeline under either flow control."""
    result = run_quantizer_bench({"max_channels": 64, "pipeline_stages": MAX_PIPELINE_STAGES,
                                  "flow_control": flow_control}, simulator,
                                 tmp_path_factory.mktemp("cocotb"), tokens=8, channels=64, rounds=6,
                                 idle=0.25, backpressure=0.3)
    report = result.report
    bench_reports.append((simulator, report))
    assert report["mismatches"] == 0
    assert report["checked"] == report["blocks"] + report["rounds"] == 6 * 32 + 6  # blocks + counter checks
    assert 0 < report["fp8_blocks"] < report["blocks"]


# The engine fgmp e2e generates for a 192-input layer of the embedded model (one build serves both), and
# the deepest engine under credit flow control (the weights' side queue with its registered read).
ENGINE = {"lanes": 4, "max_channels": 192, "quantizer_stages": 1, "dot_stages": 1}
ENGINES = {"e2e": ENGINE,
           "deepest credit": {"lanes": 2, "max_channels": 64, "quantizer_stages": MAX_PIPELINE_STAGES,
                              "dot_stages": DOT_MAX_PIPELINE_STAGES, "flow_control": "credit"}}


@pytest.mark.cocotb
@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("simulator", SIMULATORS)
def test_engine_bench(simulator, engine, tmp_path_factory, bench_reports):
    unit_params = ENGINES[engine]
    result = run_engine_bench(unit_params, simulator, tmp_path_factory.mktemp("cocotb"), tokens=10, channels=64,
                              rounds=2, idle=0.25, backpressure=0.3)
    report = result.report
    bench_reports.append((simulator, report))
    assert report["mismatches"] == 0
    assert report["checked"] == 2 * 10 * unit_params["lanes"] + 2  # lane results + counters
