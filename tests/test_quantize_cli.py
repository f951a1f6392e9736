"""``fgmp quantize`` end to end on the embedded model and on a local Hugging Face directory (tiny sizes),
and the errors a user hits."""

import json
import math

import pytest
import torch

from fgmp import golden
from fgmp.cli import main
from fgmp.golden.policy import load_layer
from test_models import _save_tiny_llama

FAST = ["--calib-samples", "2", "--eval-samples", "2", "--seq-len", "32", "--threads", "1", "--quiet"]


@pytest.fixture(autouse=True)
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_quantize_default_model_reports_and_exports(tmp_path, capsys):
    out = tmp_path / "q"
    assert main(["quantize", *FAST, "--out", str(out), "--export", "blocks.0.mlp.up_proj"]) == 0
    printed = capsys.readouterr().out
    assert "fgmp at 30% FP8: perplexity" in printed and "vs all-FP8" in printed
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [r["policy"] for r in rows] == ["unquantized", "fp8", "fgmp"]
    fgmp = rows[2]
    assert abs(fgmp["weight_fp8"] - 0.3) < 1e-3 and fgmp["clipping"] is True
    assert 0 < fgmp["activation_fp8"] < 1 and all(r["perplexity"] > 1 for r in rows)
    assert fgmp["bits_per_weight"] == pytest.approx(0.3 * 137 / 16 + 0.7 * 73 / 16, abs=0.01)
    layer = load_layer(out / "export" / "blocks.0.mlp.up_proj")
    assert layer.weights.shape == (768, 192) and layer.activation.sensitivities.numel() == 192
    assert layer.weights.fp8_fraction > 0 and bool(torch.isfinite(golden.dequantize(layer.weights)).all())
    assert (out / "results.md").read_text().startswith("| policy |")


def test_quantize_local_hugging_face_directory(tmp_path, capsys):
    model = tmp_path / "tiny-llama"
    _save_tiny_llama(model)
    text = tmp_path / "text.txt"
    text.write_text("def f(x):\n    return x + 1\n" * 200)
    out = tmp_path / "q"
    assert main(["quantize", "--model", str(model), "--calib", str(text), "--eval", str(text), *FAST,
                 "--layers", "*mlp*", "--policy", "magnitude", "--no-clipping", "--out", str(out)]) == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert rows[-1]["policy"] == "magnitude" and rows[-1]["clipping"] is False
    meta = json.loads((out / "results.json").read_text())["meta"]
    assert meta["layers"] and all("mlp" in name for name in meta["layers"])


@pytest.mark.parametrize("args, message", [
    (["--model", "/nonexistent/model"], "does not exist"),
    (["--calib", "/nonexistent/calib.txt"], "calib.txt"),
    (["--layers", "no_such_layer*"], "matches no nn.Linear layer"),
    (["--export", "blocks.9.nothing"], "Cannot export 'blocks.9.nothing': not a quantized layer"),
    (["--seq-len", "1000"], "Sequence length 1000 must be between 1 and the model's context 256"),
    (["--threads", "0"], "--threads must be at least 1, not 0"),
])
def test_quantize_errors(tmp_path, capsys, args, message):
    assert main(["quantize", *FAST, *args, "--out", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err


def test_quantize_rejects_a_bad_fraction(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["quantize", "--fp8-fraction", "1.5"])
    assert exit_info.value.code == 2 and "an FP8 fraction lies in [0, 1], not 1.5" in capsys.readouterr().err


def test_unit_decisions_match_exact_scores_on_real_activations():
    """The activation unit's truncated score (numerics §9) against the exact real-number score, on the
    embedded model's layer inputs under an FGMP plan (bench/actq_agreement.py measures more)."""
    from fgmp.golden.policy import build_plan, quantized
    from fgmp.quantize import prepare

    torch.set_num_threads(1)
    setup = prepare(calib_samples=4, eval_samples=2, seq_len=64, progress=False)
    plan = build_plan(setup.calibration, policy="fgmp", fp8_fraction=0.3)
    inputs = {}

    def capture(name):
        def hook(module, args):  # returns None: observes the input, leaves it to the quantizer hook
            inputs[name] = args[0].detach().to(torch.bfloat16)
        return hook

    hooks = [layer.register_forward_pre_hook(capture(name)) for name, layer in setup.layers.items()]
    with torch.no_grad(), quantized(setup.lm.model, plan):
        setup.lm.logits(setup.eval_sequences[:, :-1])
    for hook in hooks:
        hook.remove()
    blocks = agree = fp8 = 0
    for name, x in inputs.items():
        config = plan.activations[name].config
        unit = golden.quantize_activations(x, config).blocks.precision
        exact = golden.exact_decisions(x, config)
        blocks += unit.numel()
        agree += int((unit == exact).sum())
        fp8 += int(unit.sum())
    assert blocks == 2 * 64 * sum(layer.in_features // 16 for layer in setup.layers.values())
    assert 0.05 < fp8 / blocks < 0.95  # the threshold is live, not trivially all-or-nothing
    assert agree / blocks >= 0.999


def test_sweep_over_calibration_seeds_reports_the_spread(tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["quantize", *FAST, "--sweep", "--seeds", "0", "1", "--fractions", "0.3", "--out", str(out)]) == 0
    data = json.loads((out / "results.json").read_text())
    assert data["meta"]["seeds"] == [0, 1] and {r["seed"] for r in data["rows"]} == {0, 1}
    assert all(len(r["window_nll"]) == 2 for r in data["rows"])
    # Same evaluation windows for every seed: the unquantized model scores the same.
    unquantized = [r["perplexity"] for r in data["rows"] if r["policy"] == "unquantized"]
    assert unquantized[0] == unquantized[1]
    table = (out / "results.md").read_text()
    assert "| perplexity, mean over seeds | range over seeds | vs fgmp + clipping | seed sd | window s.e. |" in table
    assert "within noise" in table or "worse" in table or "better" in table


def test_spread_pairs_seeds_and_windows():
    from fgmp.quantize import spread

    def row(policy, clipping, seed, ppl, windows):
        return {"policy": policy, "clipping": clipping, "requested_fp8": 0.3, "seed": seed, "perplexity": ppl,
                "weight_fp8": 0.3, "activation_fp8": 0.25, "bits_per_weight": 5.76, "window_nll": windows}

    rows = [row("fgmp", True, 0, 2.0, [0.7, 0.7]), row("fgmp", True, 1, 2.0, [0.7, 0.7]),
            row("random", False, 0, 2.2, [0.80, 0.78]), row("random", False, 1, 2.4, [0.86, 0.88])]
    by = {e["policy"]: e for e in spread(rows)}
    random = by["random"]
    assert random["delta"] == pytest.approx(15.0) and random["seed_sd"] == pytest.approx(math.sqrt(50))
    se = (0.01 + 0.01) / 2  # per seed: sd of the window differences / sqrt(2), then averaged
    assert random["window_se"] == pytest.approx(100 * se)
    assert random["noise"] == pytest.approx(math.sqrt(50 / 2 + 1.0))
    assert random["within_noise"] is False and by["fgmp"]["delta"] is None
    assert (random["perplexity_min"], random["perplexity_max"]) == (2.2, 2.4)
