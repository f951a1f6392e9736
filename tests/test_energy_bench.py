"""bench/energy.py's and bench/datapath_area.py's docs sections over several depths (no simulation,
no synthesis)."""

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pytest

_BENCH = Path(__file__).resolve().parents[1] / "bench"


def _load(name):
    spec = importlib.util.spec_from_file_location(f"{name}_bench", _BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


energy = _load("energy")
UNITS = ("FGMP", "FGMP split", "FP8-only", "FP4-only")


def _row(scope, unit, datapath, total):
    return {"label": f"{scope} {unit}", "unit": unit, "weight_fp8": 0.3, "activation_fp8": 0.25,
            "pairing": {"FP4xFP4": 0.5, "mixed": 0.35, "FP8xFP8": 0.15}, "datapath_pj": 10 * datapath,
            "datapath_vs_baseline": datapath, "buffer_bits": 120.0, "buffer_pj": 18.0, "total_pj": 30 * total,
            "total_vs_baseline": total, "groups": {"multipliers": {"pj": 5 * datapath}}}


def _rows(split_datapath, split_total):
    ratios = {"FGMP": (0.99, 0.8), "FGMP split": (split_datapath, split_total), "FP8-only": (1.0, 1.0),
              "FP4-only": (0.4, 0.5)}
    return [_row(scope, unit, *ratios[unit]) for scope in ("layer", "model") for unit in UNITS]


def _section(rows_by_depth):
    args = SimpleNamespace(pipeline_stages=list(rows_by_depth), lanes=4, layer="blocks.0.mlp.up_proj", tokens=4,
                           model_tokens=2, rows=0.125, fractions=[0.3], grid=[0.3], grid_units=["FGMP split"])
    setup = SimpleNamespace(layers=["a", "b"], calibration=SimpleNamespace(
        layers={args.layer: SimpleNamespace(weight=SimpleNamespace(shape=(768, 192)))}))
    calibration = SimpleNamespace(references=[], pj_per_toggle=1e-4)
    return "\n".join(energy._section(args, rows_by_depth, calibration, setup, 1.0))


def test_every_depth_gets_its_tables_targets_and_groups_from_its_own_rows():
    text = _section({1: _rows(0.87, 0.76), 13: _rows(0.74, 0.72)})
    assert "4-lane units at P = 1 and 13" in text
    for depth in (1, 13):
        assert f"**Whole model at 30 % FP8, P = {depth}**" in text
        assert f"**One layer at 30 % FP8, P = {depth}**" in text
        assert f"whole model at 30 % FP8, P = {depth}, in % of" in text
    assert "Targets at P = 1 (split datapath, whole model, 30 % FP8): datapath 0.870 (missed; target ≤ 0.75); " \
           "with buffer reads 0.760 (met; target ≤ 0.8)" in text
    assert "Targets at P = 13 (split datapath, whole model, 30 % FP8): datapath 0.740 (met; target ≤ 0.75); " \
           "with buffer reads 0.720 (met; target ≤ 0.8)" in text
    # The sweep and the mix grid are the first depth's.
    assert "**FP8 fraction sweep, P = 1**" in text and "**Weight × activation mix, FGMP split, P = 1**" in text
    assert "| 30.0 % | 30.0 % | 25.0 % | 0.800 / 0.990 | 0.760 / 0.870 |" in text


@pytest.mark.parametrize("depths", [[1], [13, 1]])
def test_the_first_depth_leads(depths):
    text = _section({d: _rows(0.8 + d / 100, 0.7) for d in depths})
    first = text.index(f"**Whole model at 30 % FP8, P = {depths[0]}**")
    assert all(first < text.index(f"**Whole model at 30 % FP8, P = {d}**") for d in depths[1:])
    assert f"**FP8 fraction sweep, P = {depths[0]}**" in text
