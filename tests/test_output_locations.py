"""Every command that writes files, run from a working directory that is not the repo root: with a
relative ``--out``, and with no ``--out`` at all (its default, relative to the working directory).

Simulators, cocotb benches and the synthesis tools run in directories of their own, so a path that is
handed to them relative breaks only this way (``fgmp e2e`` once did, while every test that passed an
absolute temporary directory stayed green). The e2e and demo runs are in tests/test_e2e.py."""

import json

import pytest
import torch

from fgmp.cli import build_parser, main

# Commands with an --out option -> where their own tests run them relative and by default.
COVERED = {
    "generate decoders": __name__, "generate dot": __name__, "generate actq": __name__,
    "generate engine": __name__, "generate tile": __name__, "quantize": __name__, "area": __name__, "timing": __name__,
    "constraints": __name__, "bitstream": __name__, "e2e": "test_e2e", "demo": "test_e2e",
}


def _commands_with_out(parser, prefix=""):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands_with_out(sub, f"{prefix} {name}".strip())
        elif "--out" in action.option_strings:
            yield prefix


def test_every_command_with_an_output_directory_is_covered():
    assert sorted(_commands_with_out(build_parser())) == sorted(COVERED)


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """A working directory two levels inside a temporary tree, away from the checkout."""
    cwd = tmp_path / "work" / "here"
    cwd.mkdir(parents=True)
    monkeypatch.chdir(cwd)
    return cwd


@pytest.fixture(autouse=True)
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


GENERATE = {
    "decoders": ([], ["e2m1_decoder.v", "e4m3_decoder.v", "ue4m3_decoder.v"]),
    "dot": (["--lanes", "1", "--block-size", "2", "--max-blocks", "4"], ["fgmp_dot_l1.v"]),
    "actq": (["--block-size", "2", "--max-channels", "4"], ["fgmp_actq.v"]),
    "engine": (["--lanes", "1", "--block-size", "2", "--max-channels", "4"], ["fgmp_engine_l1.v"]),
    "tile": (["--lanes", "1", "--max-inputs", "16", "--max-outputs", "16", "--max-tokens", "1"], ["fgmp_tile_l1.v"]),
}


@pytest.mark.parametrize("unit", list(GENERATE))
@pytest.mark.parametrize("out", ["../verilog", None])
def test_generate(unit, out, elsewhere, capsys):
    options, files = GENERATE[unit]
    assert main(["generate", unit, *options, *(["--out", out] if out else [])]) == 0
    directory = elsewhere.parent / "verilog" if out else elsewhere / "out" / "verilog"
    assert sorted(p.name for p in directory.iterdir()) == files
    assert capsys.readouterr().out.count("lint clean") == len(files)  # lint was handed the path


QUANTIZE = ["--calib-samples", "2", "--eval-samples", "2", "--seq-len", "32", "--threads", "1", "--quiet",
            "--export", "blocks.0.attn.q_proj"]


@pytest.mark.parametrize("out", ["q", None])
def test_quantize(out, elsewhere):
    from fgmp.golden.policy import load_layer

    assert main(["quantize", *QUANTIZE, *(["--out", out] if out else [])]) == 0
    directory = elsewhere / (out or "out/quantize")
    assert [row["policy"] for row in json.loads((directory / "results.json").read_text())["rows"]] == [
        "unquantized", "fp8", "fgmp"]
    assert load_layer(directory / "export" / "blocks.0.attn.q_proj").weights.shape == (192, 192)


@pytest.mark.parametrize("out", ["runs/area", None])
def test_area(out, elsewhere):
    assert main(["area", "decoder", "--format", "e2m1", "--targets", "generic",
                 *(["--out", out] if out else [])]) == 0
    directory = elsewhere / (out or "out/flow/area")
    [result] = json.loads((directory / "area.json").read_text())
    assert result["target"] == "generic" and result["cells"]
    assert (directory / "e2m1_decoder" / "generic" / "area.log").is_file()


@pytest.mark.parametrize("out", ["runs/timing", None])
def test_timing(out, elsewhere):
    assert main(["timing", "decoder", "--format", "e2m1", "--parts", "ice40-up5k",
                 *(["--out", out] if out else [])]) == 0
    directory = elsewhere / (out or "out/flow/timing")
    [result] = json.loads((directory / "timing.json").read_text())
    assert result["fmax_mhz"] > 0
    assert (directory / "e2m1_decoder" / "ice40-up5k" / "nextpnr.log").is_file()


@pytest.mark.parametrize("out", ["runs/constraints", None])
def test_constraints(out, elsewhere):
    assert main(["constraints", "dot", "--lanes", "1", *(["--out", out] if out else [])]) == 0
    directory = elsewhere / (out or "out/constraints")
    assert sorted(p.suffix for p in directory.iterdir()) == [".sdc", ".v", ".xdc"]


@pytest.mark.parametrize("out", ["runs/bitstream", None])
def test_bitstream(out, elsewhere, capsys):
    """The smallest self-test, by the code path of the 1-lane build in bench/area.py (--bitstream)."""
    assert main(["bitstream", "--board", "ulx3s-85f", "--lanes", "1", "--block-size", "1", "--max-blocks", "2",
                 "--formats", "nvfp4", "--pipeline-stages", "0", "--reductions", "2",
                 *(["--out", out] if out else [])]) == 0
    directory = elsewhere / (out or "out/flow/bitstream")
    assert (directory / "fgmp_selftest.bit").stat().st_size > 100_000
    printed = capsys.readouterr().out
    assert str(directory / "fgmp_selftest.bit") in printed and "PASS at 25.00 MHz" in printed
