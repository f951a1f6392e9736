"""bench/tile.py's arithmetic and its docs-section rewrite (no synthesis, no model)."""

import importlib.util
import json
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "bench" / "tile.py"
_SPEC = importlib.util.spec_from_file_location("tile_bench", _PATH)
bench = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(bench)


@pytest.mark.parametrize("lanes, inputs, elements", [(4, 192, 1), (8, 192, 1), (16, 192, 2), (1, 16, 1), (16, 16, 16),
                                                     (32, 64, 8)])
def test_elements_per_cycle_is_the_narrowest_width_that_keeps_up(lanes, inputs, elements):
    assert bench.elements_per_cycle(lanes, inputs) == elements
    assert elements * inputs >= lanes * 16


def test_elements_per_cycle_refuses_a_tile_no_width_keeps_up_with():
    with pytest.raises(ValueError):
        bench.elements_per_cycle(64, 16)


def test_bits_per_mac_follows_the_token_major_dataflow():
    # All NVFP4: each cycle 4 x 73 weight bits and one 137-bit activation block for 64 MACs.
    b = bench.bits_per_mac(4, 0.0)
    assert b["fgmp"] == pytest.approx((4 * 73 + 137) / 64)
    assert b["fp8_only"] == pytest.approx((4 * 136 + 136) / 64)
    # All FP8: the high words too; the ratio to FP8-only is then (137 L + 137) / (136 L + 136).
    b = bench.bits_per_mac(16, 1.0)
    assert b["fgmp"] == pytest.approx((16 * 137 + 137) / 256)
    assert b["ratio"] == pytest.approx(137 / 136)
    # A mix: the FP8 share of the weight blocks adds 64 bits per FP8 block.
    b = bench.bits_per_mac(8, 0.25)
    assert b["fgmp_weight"] == pytest.approx((73 + 16) / 16)
    assert b["fgmp_activation"] == pytest.approx(137 / 128)
    assert b["fgmp"] == pytest.approx(b["fgmp_weight"] + b["fgmp_activation"])


def test_ideal_cycles_utilisation_and_the_fill_drain_model():
    assert bench.ideal_cycles(4, 768, 192, 4) == 9216
    assert bench.utilisation(9216 * 2, lanes=4, tokens=4, outputs=768, inputs=192) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        bench.utilisation(0, lanes=4, tokens=4, outputs=768, inputs=192)
    parts = bench.fill_drain(3, 2, 34, 4, 1)
    assert sum(parts.values()) == 2 + 3 + 1 + 3 + 2 + 34 + 1
    assert bench.fill_drain(3, 2, 34, 4, 1, quantize=False)["activation unit"] == 0


def test_the_section_is_replaced_between_its_markers_and_appended_when_missing():
    doc = "# Title\n\nintro\n"
    once = bench.replace_section(doc, ["first"])
    assert once == "# Title\n\nintro\n\n<!-- tile:begin -->\n\nfirst\n<!-- tile:end -->\n"
    twice = bench.replace_section(once.replace("<!-- tile:end -->\n", "<!-- tile:end -->\n\nafter\n"), ["second"])
    assert twice == "# Title\n\nintro\n\n<!-- tile:begin -->\n\nsecond\n<!-- tile:end -->\n\nafter\n"


def test_measured_cycles_come_from_the_command_line_and_json(tmp_path):
    e2e = tmp_path / "e2e.json"
    e2e.write_text(json.dumps({"bench": {"tile": {"params": {"lanes": 4, "max_inputs": 192}, "tokens": 4,
                                                  "outputs": 768, "inputs": 192, "cycles": 9300}}}))
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"params": {"lanes": 8},
                                  "runs": [{"tokens": 4, "outputs": 768, "inputs": 192, "cycles": 4700}]}))
    found = bench.load_cycles([e2e, report, tmp_path / "missing.json"], ["16:2400"])
    assert found[4]["cycles"] == 9300 and found[4]["inputs"] == 192
    assert found[8]["cycles"] == 4700 and found[8]["source"] == str(report)
    assert found[16] == {"cycles": 2400, "source": "--cycles"}
    assert bench.load_cycles([tmp_path / "missing.json"], []) == {}
