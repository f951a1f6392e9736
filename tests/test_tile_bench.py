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


# The tables and the section from a made-up result (no synthesis): three targets -------------------------

def _generic(cells, ffs):
    return {"$_AND_": cells - ffs, "$_DFF_P_": ffs}


def _ecp5(luts, ffs, dsps=0, dpr=0):
    return {"LUT4": luts - 2 * dpr, "TRELLIS_FF": ffs, "MULT18X18D": dsps, "TRELLIS_DPR16X4": dpr}


def _point(lanes, actq_nodsp, *, measured=True):
    """One L. On ecp5-nodsp the four parts' LUT4 eq. total 10,000, the activation unit ``actq_nodsp`` of it;
    on ecp5 the dot unit's multipliers are in DSPs (a smaller LUT4 eq.), on generic the share is 3 %."""
    area = {"generic": {"dot unit": _generic(8_000, 100), "post-processing": _generic(700, 10),
                        "activation unit": _generic(300, 50), "control": _generic(1_000, 20)},
            "ecp5": {"dot unit": _ecp5(3_000, 100, dsps=4 * lanes), "post-processing": _ecp5(400, 10),
                     "activation unit": _ecp5(actq_nodsp, 50, dpr=8), "control": _ecp5(600, 20)},
            "ecp5-nodsp": {"dot unit": _ecp5(9_000 - actq_nodsp, 100), "post-processing": _ecp5(400, 10),
                           "activation unit": _ecp5(actq_nodsp, 50, dpr=8), "control": _ecp5(600, 20)}}
    if not measured:
        area["ecp5-nodsp"]["dot unit"] = None
    memory = {"width": 73, "depth": 512, "count": lanes, "cells": {"DP16KD": 3, "LUT4": 5, "TRELLIS_FF": 1}}
    return {"lanes": lanes, "params": {"elements_per_cycle": 2 if lanes == 16 else 1, "fp8_weight_blocks": 100},
            "memory_bits": {"table": 768 * 8}, "latency": {"dot": 3, "postproc": 2, "actq": 34},
            "weight_bits": {"fgmp": 600_000, "fp8_only": 1_000_000, "max_lane_fp8_blocks": 100},
            "generated_weight_bits": {"fgmp": 620_000, "fp8_only": 1_000_000},
            "area": area, "memories": {name: dict(memory) for name in
                                       ("weights_low", "weights_high", "activations", "weights_fp8_only")}}


def _result(actq_at_16, **kwargs):
    return {"layer": "blocks.0.mlp.up_proj", "fp8_fraction_requested": 0.3, "weight_fp8_fraction": 0.25,
            "weights_shape": [768, 192], "tokens": 4,
            "points": [_point(4, 1_500), _point(8, 800), _point(16, actq_at_16, **kwargs)]}


def _section(result, targets=bench.TARGETS):
    t = bench.tables(result, {}, list(targets))
    return t, "\n".join(bench.section(result, t, list(targets), "python bench/tile.py", 1.0, yosys="Yosys 0.0"))


def test_three_targets_render_with_the_no_dsp_columns_and_share():
    result = _result(490)
    t, text = _section(result)
    assert t["area L=16"]["header"][-2:] == ["ECP5 no-DSP LUT4 eq.", "ECP5 no-DSP FF"]
    rows, totals = bench.area_rows(result["points"][2], list(bench.TARGETS))
    assert rows[0][0] == "dot unit" and rows[0][-2:] == ["8,510", "100"]
    assert rows[-1][0] == "logic total" and rows[-1][-2:] == ["10,000", "180"]
    assert len(rows[-1]) == 1 + 2 + 5 + 2
    assert totals[("ecp5-nodsp", "LUT4 eq.")] == 10_000 and totals[("ecp5", "MULT18X18D")] == 64
    assert "| part | generic cells | generic FF | ECP5 LUT4 eq. | ECP5 FF | MULT18X18D | DPR16X4 | DP16KD | " \
           "ECP5 no-DSP LUT4 eq. | ECP5 no-DSP FF |" in text
    assert "| L | E | generic (cells) | ecp5 (LUT4 eq.) | ecp5, no DSP (LUT4 eq.) |" in text
    assert "| 16 | 2 | 3.0 % | 10.9 % | 4.9 % |" in text  # 490 / (3,000 + 400 + 490 + 600) on ecp5, / 10,000 without DSPs
    assert "synth_ecp5 -nodsp" in text
    # The DSP paragraph points at the no-DSP column.
    assert "64 at L = 16" in text and "the \"ecp5, no DSP\" column" in text
    assert "so they overstate the activation unit's share at L = 16 (10.9 % against 4.9 % without DSPs" in text


@pytest.mark.parametrize("actq, verdict", [(490, "met"), (510, "not met")])
def test_the_status_sentence_follows_the_measured_shares(actq, verdict):
    result = _result(actq)
    sentence = bench.share_status(result["points"], list(bench.TARGETS))
    share = f"{actq / 100:.1f} %"
    assert f"ECP5 without DSPs {share} (**{verdict}**)" in sentence
    assert "generic gates 3.0 % (**met**)" in sentence
    assert "ECP5 with DSPs" in sentence and "(**not met**)" in sentence  # the DSP-distorted share is high
    assert sentence.startswith("At L = 16 ") and "≤ 5 %" in sentence
    _, text = _section(result)
    assert sentence in text


def test_an_unmeasured_no_dsp_point_says_so_and_two_targets_still_render():
    result = _result(490, measured=False)
    sentence = bench.share_status(result["points"], list(bench.TARGETS))
    assert "ECP5 without DSPs not measured" in sentence
    _, text = _section(result)
    assert "| 16 | 2 | 3.0 % | 10.9 % | not measured |" in text
    t, text = _section(result, ("generic", "ecp5"))
    assert "no DSP" not in text and "ecp5-nodsp" not in text
    assert bench.share_status(result["points"], ["generic", "ecp5"]).endswith("ECP5 with DSPs 10.9 % (**not met**).")
    assert bench.share_status(result["points"][:2], list(bench.TARGETS)) is None


def test_the_no_dsp_control_script_is_the_ecp5_one_with_nodsp():
    with_dsp = bench._ecp5_shell_script("top", ["top.dot"])
    without = bench._ecp5_shell_script("top", ["top.dot"], nodsp=True)
    assert without == with_dsp.replace("synth_ecp5 ", "synth_ecp5 -nodsp ")
    assert without.count("synth_ecp5 -nodsp -top top") == 2
