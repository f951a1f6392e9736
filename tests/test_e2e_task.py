"""``fgmp e2e --model DIR --task masked``: a masked LM's layer through the generated engine. The layer's
input is captured from the windows as the evaluation masks them; the perplexity rows are the masked-token
perplexity of ``fgmp quantize --task masked``."""

import json

import pytest
import torch

from fgmp.cli import main
from test_model_families import _byte_tokenizer
from test_models import no_network  # noqa: F401 (a fixture: these tests refuse network access)

FAST = ["--calib-samples", "2", "--eval-samples", "2", "--threads", "1", "--quiet", "--no-energy"]
LAYER = "bert.encoder.layer.0.intermediate.dense"  # 64 -> 128


@pytest.fixture(autouse=True)
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _tiny_bert(path):
    """A tiny random BERT whose context holds e2e's 256-token windows, saved like a checkpoint."""
    import transformers as T

    torch.manual_seed(0)
    T.BertForMaskedLM(T.BertConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
                                   vocab_size=300, max_position_embeddings=512, pad_token_id=259)).save_pretrained(path)
    _byte_tokenizer(["[CLS]", "[SEP]", "[MASK]", "[PAD]", "[UNK]"], cls_token="[CLS]", sep_token="[SEP]",
                    mask_token="[MASK]", pad_token="[PAD]", unk_token="[UNK]").save_pretrained(path)
    return path


def test_masked_capture_sees_the_windows_the_evaluation_scores(tmp_path, no_network):
    from fgmp.e2e import capture_layer_input
    from fgmp.golden.models import window_losses
    from fgmp.golden.policy import build_plan, quantized
    from fgmp.quantize import prepare

    torch.set_num_threads(1)
    setup = prepare(str(_tiny_bert(tmp_path / "bert")), calib_samples=2, eval_samples=2, progress=False)
    assert setup.lm.task == "masked"
    plan = build_plan(setup.calibration, policy="fgmp", fp8_fraction=0.3)
    tokens = 2 * (setup.eval_sequences.shape[1] - 1)  # both windows: the evaluation's one batch
    captured = capture_layer_input(setup, plan, LAYER, tokens)
    seen = []
    handle = setup.layers[LAYER].register_forward_pre_hook(
        lambda module, args: seen.append(args[0].detach().to(torch.bfloat16).reshape(-1, 64)))
    try:
        with quantized(setup.lm.model, plan):
            window_losses(setup.lm, setup.eval_sequences, progress=False)
    finally:
        handle.remove()
    assert torch.equal(captured, torch.cat(seen)[:tokens])
    # Without the masking the layer sees other inputs: the capture did mask.
    with quantized(setup.lm.model, plan):
        handle = setup.layers[LAYER].register_forward_pre_hook(
            lambda module, args: seen.append(args[0].detach().to(torch.bfloat16).reshape(-1, 64)))
        try:
            setup.lm.logits(setup.eval_sequences[:, :-1])
        finally:
            handle.remove()
    assert not torch.equal(captured, seen[-1][:tokens])


@pytest.mark.cocotb
def test_e2e_masked_lm_layer_is_bit_exact_on_icarus(tmp_path, capsys, no_network):
    model = _tiny_bert(tmp_path / "bert")
    out = tmp_path / "out"
    assert main(["e2e", *FAST, "--model", str(model), "--task", "masked", "--layer", LAYER, "--tokens", "2",
                 "--simulator", "icarus", "--out", str(out)]) == 0
    summary = json.loads((out / "e2e.json").read_text())
    assert summary["task"] == "masked" and summary["bench"]["mismatches"] == 0
    assert summary["bench"]["out_features"] == 128 and summary["bench"]["tokens"] == 2
    assert [row["policy"] for row in summary["perplexity"]] == ["fp8", "fgmp", "nvfp4"]
    assert all(100 < row["perplexity"] < 1000 for row in summary["perplexity"])  # random init: about the vocabulary
    assert "| policy | masked-token perplexity | bits per weight |" in (out / "e2e.md").read_text()
    assert "mismatches: 0" in capsys.readouterr().out
