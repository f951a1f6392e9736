"""Switching activity of the dot unit on given reductions, from Verilator's toggle coverage.

Built with ``--coverage-toggle``, the Verilator model counts the transitions of every bit of every
signal the generated Verilog declares (``--coverage-max-width`` raised from its default of 256 bits,
beyond which Verilator would leave a signal out silently); cocotb's Verilator main writes the counts
to ``coverage.dat`` when the simulation ends. The run is the dot bench's ``given_reductions`` test, so every output of an
activity run is also checked bit for bit against golden.
"""

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from fgmp.hw import DotUnit
from fgmp.hw.reference import ReferenceCircuit
from fgmp.hw.verilog import write_verilog
from .dot import dot_top
from .dot_stimuli import reductions_state
from .runner import build_model, run_bench

__all__ = ["Activity", "read_toggles", "build_activity_model", "run_dot_activity", "run_reference_activity"]

# One coverage point: fields separated by \x01, key and value by \x02, then the count.
_POINT = re.compile(r"^C '(?P<fields>[^']*)' (?P<count>\d+)$")
_MAX_WIDTH = 1 << 16
_BIT = re.compile(r"^(?P<name>.+?)(?:\[(?P<bit>\d+)\])?(?::.*)?$")


@dataclass(frozen=True)
class Activity:
    """Transitions per signal (hierarchical name below the top, e.g. ``acc0`` or ``x0_e4m3.code``) and
    its width in bits, over ``cycles`` clock cycles that carried ``block_pairs`` block pairs."""

    toggles: dict
    bits: dict
    cycles: int
    block_pairs: int


def read_toggles(path, top):
    """({signal: transitions summed over its bits and both directions}, {signal: bits}) from a
    Verilator coverage.dat, signals named relative to the instance ``top``."""
    toggles, bit_sets = {}, {}
    for line in Path(path).read_text().splitlines():
        point = _POINT.match(line)
        if point is None:
            continue
        fields = dict(f.split("\x02", 1) for f in point["fields"].split("\x01") if "\x02" in f)
        if not fields.get("page", "").startswith("v_toggle"):
            continue
        hierarchy = fields.get("h", "").split(".")
        if top not in hierarchy:
            continue
        scope = hierarchy[hierarchy.index(top) + 1:]
        signal = _BIT.match(fields["o"])
        name = ".".join(scope + [signal["name"]])
        toggles[name] = toggles.get(name, 0) + int(point["count"])
        bit_sets.setdefault(name, set()).add(signal["bit"])
    return toggles, {name: len(bits) for name, bits in bit_sets.items()}


_TOGGLE_BUILD = ["--coverage-toggle", "--coverage-max-width", str(_MAX_WIDTH)]


def _activity_source(unit, params, build_root):
    top = dot_top(unit)
    run_dir = (Path(build_root) / "verilator" /
               f"{top}_b{unit.block_size}_n{unit.max_blocks}_p{unit.pipeline_stages}_toggle").resolve()
    return top, run_dir, write_verilog(unit, top, run_dir, params=params)


def build_activity_model(unit_params, build_root):
    """Build the toggle-counting Verilator model that run_dot_activity of the same unit and
    ``build_root`` will use, before its stimuli exist (sim.runner.build_model)."""
    top, run_dir, source = _activity_source(DotUnit(**unit_params), unit_params, build_root)
    return build_model("verilator", [source], top, run_dir=run_dir, build_args=_TOGGLE_BUILD)[0]


def run_reference_activity(operation, width, build_root, *, cycles=2000, seed=1):
    """The Activity of ``ReferenceCircuit(operation=..., width=...)`` over ``cycles`` random operations
    (one per cycle; ``block_pairs`` counts them), every result checked (sim/reference_bench.py)."""
    params = {"operation": operation, "width": width}
    unit = ReferenceCircuit(**params)
    top = f"reference_{operation}{width}"
    run_dir = (Path(build_root) / "verilator" / f"{top}_toggle").resolve()
    source = write_verilog(unit, top, run_dir, params=params)
    coverage = run_dir / "coverage.dat"
    coverage.unlink(missing_ok=True)
    result = run_bench(simulator="verilator", sources=[source], top=top, test_module="fgmp.sim.reference_bench",
                       build_dir=run_dir, extra_env={"FGMP_REFERENCE_BENCH": json.dumps(
                           {**params, "cycles": cycles, "seed": seed})},
                       testcases=["random_operands"], build_args=_TOGGLE_BUILD)
    if not coverage.exists():
        raise FileNotFoundError(f"Verilator wrote no toggle coverage to {coverage}")
    toggles, bits = read_toggles(coverage, top)
    return Activity(toggles=toggles, bits=bits, cycles=cycles, block_pairs=result.report["block_pairs"])


def run_dot_activity(unit_params, reductions, build_root, *, seed=1):
    """Stream ``reductions`` (sim.dot_stimuli.Reduction, one weight row per lane) through
    ``DotUnit(**unit_params)`` on Verilator at full rate; returns the Activity. The model is built once
    per unit (sim.runner.build_model)."""
    unit = DotUnit(**unit_params)
    top, build_dir, source = _activity_source(unit, unit_params, build_root)
    stimuli = build_dir / "reductions.pt"
    torch.save(reductions_state(reductions), stimuli)
    coverage = build_dir / "coverage.dat"
    coverage.unlink(missing_ok=True)
    config = {"unit": {**unit_params, "formats": list(unit.formats)}, "reductions": str(stimuli), "seed": seed}
    result = run_bench(simulator="verilator", sources=[source], top=top, test_module="fgmp.sim.dot_bench",
                       build_dir=build_dir, extra_env={"FGMP_DOT_BENCH": json.dumps(config)},
                       testcases=["given_reductions"], build_args=_TOGGLE_BUILD)
    if not coverage.exists():
        raise FileNotFoundError(f"Verilator wrote no toggle coverage to {coverage}")
    toggles, bits = read_toggles(coverage, top)
    report = result.report
    return Activity(toggles=toggles, bits=bits, cycles=report["cycles"], block_pairs=report["block_pairs"])
