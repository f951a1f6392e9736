"""Installed layout (one fgmp namespace) and the fgmp command line."""

import subprocess
import sys
from pathlib import Path

import pytest

from fgmp.cli import main


def test_installed_code_lives_under_one_namespace(tmp_path):
    """Outside the checkout only fgmp.* imports; no bare hw/golden/sim module is installed."""
    code = ("import importlib.util as u, fgmp.hw, fgmp.golden, fgmp.sim;"
            "print([n for n in ('hw', 'golden', 'sim') if u.find_spec(n)])")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_golden_never_imports_hw():
    code = "import sys, fgmp.golden; print(any(m.startswith('fgmp.hw') or m.startswith('amaranth') for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_hw_never_imports_golden():
    code = "import sys, fgmp.hw, fgmp.hw.verilog; print(any(m.startswith('fgmp.golden') or m == 'torch' for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_generate_decoders_writes_lint_clean_verilog(tmp_path, capsys):
    assert main(["generate", "decoders", "--out", str(tmp_path)]) == 0
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == ["e2m1_decoder.v", "e4m3_decoder.v", "ue4m3_decoder.v"]
    out = capsys.readouterr().out
    assert out.count("lint clean") == 3
    verilog = (tmp_path / "e4m3_decoder.v").read_text()
    assert "module e4m3_decoder(decoded, code);" in verilog
    assert "input [7:0] code;" in verilog and "output [10:0] decoded;" in verilog
    assert str(Path.cwd()) not in verilog, "generated Verilog must not depend on the checkout path"


def test_generate_one_format(tmp_path):
    assert main(["generate", "decoders", "--format", "e2m1", "--out", str(tmp_path), "--no-lint"]) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["e2m1_decoder.v"]


def test_unknown_format_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "decoders", "--format", "e5m2"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'e5m2'" in capsys.readouterr().err


def test_lint_failure_is_reported_not_hidden(tmp_path):
    """The waivers cover Amaranth's code-generation patterns only: latches and undriven nets still fail."""
    from fgmp.hw.verilog import LintError, lint

    bad = tmp_path / "stray.v"
    bad.write_text("module stray(input [3:0] a, input en, output y, output z);\n  wire [3:0] floating;\n"
                   "  reg held;\n  always @* if (en) held = a[1];\n  assign y = a[0] ^ held;\n"
                   "  assign z = floating[0];\nendmodule\n")
    with pytest.raises(LintError) as failure:
        lint(bad, "stray")
    assert "Latch inferred for signal 'stray.held'" in str(failure.value)
    assert "Bits of signal are not driven: 'floating'" in str(failure.value)


def test_console_script_is_installed():
    result = subprocess.run([Path(sys.executable).with_name("fgmp"), "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "generate" in result.stdout and "demo" in result.stdout


@pytest.mark.parametrize("formats,top", [(["nvfp4", "fp8"], "fgmp_dot_l2"), (["fp8"], "fp8_dot_l2"),
                                         (["nvfp4"], "nvfp4_dot_l2")])
def test_generate_dot_writes_lint_clean_verilog(tmp_path, capsys, formats, top):
    assert main(["generate", "dot", "--lanes", "2", "--formats", *formats, "--out", str(tmp_path)]) == 0
    assert "lint clean" in capsys.readouterr().out
    verilog = (tmp_path / f"{top}.v").read_text()
    assert f"module {top}(" in verilog
    for port in ("input clk;", "input rst;", "input i__valid;", "output i__ready;", "output o__valid;",
                 "input o__ready;"):
        assert port in verilog
    block_bits = {"fgmp_dot_l2": 16 * 8 + 8 + 1, "fp8_dot_l2": 16 * 8 + 8, "nvfp4_dot_l2": 16 * 4 + 8}[top]
    assert f"input [{3 * block_bits + 2 - 1}:0] i__payload;" in verilog
    assert f"output [{2 * 32 + 1 - 1}:0] o__payload;" in verilog


def test_generate_dot_with_credit_flow_control(tmp_path, monkeypatch, capsys):
    """--flow-control credit, into a relative directory: its own module name, the same ports, lint clean."""
    monkeypatch.chdir(tmp_path)
    assert main(["generate", "dot", "--lanes", "2", "--pipeline-stages", "3", "--flow-control", "credit",
                 "--out", "rel"]) == 0
    out = capsys.readouterr().out
    assert "lint clean" in out and "credit flow control (6 result entries)" in out
    verilog = (tmp_path / "rel" / "fgmp_credit_dot_l2.v").read_text()
    assert "module fgmp_credit_dot_l2(" in verilog and "output [64:0] o__payload;" in verilog


def test_generate_dot_reports_invalid_parameters(tmp_path, capsys):
    assert main(["generate", "dot", "--lanes", "0", "--out", str(tmp_path)]) == 2
    assert "fgmp: error: Lanes must be at least 1, not 0" in capsys.readouterr().err
    from fgmp.hw.dot import MAX_PIPELINE_STAGES

    deeper = MAX_PIPELINE_STAGES + 1
    assert main(["generate", "dot", "--pipeline-stages", str(deeper), "--out", str(tmp_path)]) == 2
    assert f"Pipeline stages must be between 0 and {MAX_PIPELINE_STAGES}, not {deeper}" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_generate_actq_and_engine_write_lint_clean_verilog(tmp_path, capsys):
    assert main(["generate", "actq", "--max-channels", "64", "--out", str(tmp_path)]) == 0
    assert main(["generate", "engine", "--lanes", "2", "--max-channels", "64", "--out", str(tmp_path)]) == 0
    assert capsys.readouterr().out.count("lint clean") == 2
    actq = (tmp_path / "fgmp_actq.v").read_text()
    engine = (tmp_path / "fgmp_engine_l2.v").read_text()
    assert "module fgmp_actq(" in actq and "output [31:0] fp8_blocks;" in actq
    assert "input [257:0] i__payload;" in actq  # 16 BF16 values + first + last
    assert "module fgmp_engine_l2(" in engine and "input [531:0] i__payload;" in engine  # + 2 x 137 weights


def test_generate_actq_and_engine_with_credit_flow_control(tmp_path, monkeypatch, capsys):
    """--flow-control credit into a relative directory: the same module names and ports, lint clean."""
    monkeypatch.chdir(tmp_path)
    assert main(["generate", "actq", "--max-channels", "64", "--pipeline-stages", "4", "--flow-control", "credit",
                 "--out", "rel"]) == 0
    assert main(["generate", "engine", "--lanes", "2", "--max-channels", "64", "--flow-control", "credit",
                 "--out", "rel"]) == 0
    out = capsys.readouterr().out
    assert out.count("lint clean") == 2 and out.count("credit flow control") == 2
    assert "input [257:0] i__payload;" in (tmp_path / "rel" / "fgmp_actq.v").read_text()
    assert "input [531:0] i__payload;" in (tmp_path / "rel" / "fgmp_engine_l2.v").read_text()


def test_generate_actq_with_a_one_row_table_is_lint_clean(tmp_path, capsys):
    """C = B: the table has one row, and no signal may have zero width."""
    assert main(["generate", "actq", "--max-channels", "16", "--out", str(tmp_path)]) == 0
    assert "lint clean" in capsys.readouterr().out


def test_generate_actq_reports_invalid_parameters(tmp_path, capsys):
    assert main(["generate", "actq", "--max-channels", "100", "--out", str(tmp_path)]) == 2
    assert "Maximum channels (100) must be a multiple of the block size (16)" in capsys.readouterr().err
