"""Model families through ``fgmp quantize --model DIR --task ...``: tiny random Llama, GPT-2 (Conv1D
layers), BERT and RoBERTa (masked LMs) saved with save_pretrained into a temporary directory; the seeded
masking of masked LMs; the clear errors for families and tasks the command line does not run; and the
Python API on a model that is no language model, with the user's own loss (docs/policy.md §11)."""

import json
import math

import pytest
import torch
from torch import nn

from fgmp.cli import main
from test_models import no_network  # noqa: F401 (a fixture: these tests refuse network access)
from fgmp.golden.models import (
    default_task, load_hf_model, masked_positions, perplexity, sequence_loss, token_sequences,
)

FAST = ["--calib-samples", "2", "--eval-samples", "2", "--seq-len", "32", "--threads", "1", "--quiet"]
TEXT = "def f(x):\n    return x + 1  # tokens for every family\n" * 60


@pytest.fixture(autouse=True)
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _byte_tokenizer(specials, **roles):
    """A byte-level tokenizer built offline: 256 byte tokens plus ``specials``; BERT-style templates
    when a CLS and a SEP token are named."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    vocab.update({token: 256 + i for i, token in enumerate(specials)})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=roles.get("unk_token")))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    if "cls_token" in roles:
        cls, sep = roles["cls_token"], roles["sep_token"]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{cls} $A {sep}", special_tokens=[(cls, vocab[cls]), (sep, vocab[sep])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, **roles)


def save_family(family, path):
    """A tiny random model of ``family`` and its tokenizer, saved like a downloaded checkpoint."""
    import transformers as T

    torch.manual_seed(0)
    bert_roles = dict(cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]", pad_token="[PAD]",
                      unk_token="[UNK]")
    if family == "llama":
        model = T.LlamaForCausalLM(T.LlamaConfig(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
            vocab_size=300, max_position_embeddings=128, bos_token_id=256, eos_token_id=257))
        tokenizer = _byte_tokenizer(["<s>", "</s>", "<unk>"], bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    elif family == "gpt2":
        model = T.GPT2LMHeadModel(T.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=128, vocab_size=300,
                                               bos_token_id=256, eos_token_id=256))
        tokenizer = _byte_tokenizer(["<|endoftext|>"], bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    elif family == "bert":
        model = T.BertForMaskedLM(T.BertConfig(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, vocab_size=300,
            max_position_embeddings=128, pad_token_id=259))
        tokenizer = _byte_tokenizer(["[CLS]", "[SEP]", "[MASK]", "[PAD]", "[UNK]"], **bert_roles)
    elif family == "roberta":
        model = T.RobertaForMaskedLM(T.RobertaConfig(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, vocab_size=300,
            max_position_embeddings=300, pad_token_id=259, bos_token_id=256, eos_token_id=257))  # ids from pad + 1
        tokenizer = _byte_tokenizer(["[CLS]", "[SEP]", "[MASK]", "[PAD]", "[UNK]"], **bert_roles)
    else:
        raise ValueError(family)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.mark.parametrize("family, task, expected", [
    ("llama", None, "causal"), ("gpt2", "causal", "causal"), ("bert", None, "masked"), ("roberta", "masked", "masked"),
])
def test_quantize_every_family_from_the_command_line(tmp_path, capsys, family, task, expected, no_network):
    model = save_family(family, tmp_path / family)
    text = tmp_path / "text.txt"
    text.write_text(TEXT)
    out = tmp_path / "q"
    args = ["quantize", "--model", str(model), "--calib", str(text), "--eval", str(text), *FAST, "--out", str(out)]
    assert main(args + (["--task", task] if task else [])) == 0
    printed = capsys.readouterr().out
    assert f"({expected} LM, {'masked-token perplexity' if expected == 'masked' else 'perplexity'})" in printed
    data = json.loads((out / "results.json").read_text())
    assert data["meta"]["task"] == expected and len(data["meta"]["layers"]) >= 8  # attention and MLP of 2 layers
    fgmp = data["rows"][-1]
    assert fgmp["policy"] == "fgmp" and abs(fgmp["weight_fp8"] - 0.3) < 0.01
    assert all(100 < r["perplexity"] < 1000 for r in data["rows"])  # random init: about the vocabulary size


def test_gpt2_conv1d_layers_become_linear_without_changing_the_model(tmp_path, no_network):
    import transformers as T

    path = save_family("gpt2", tmp_path / "gpt2")
    lm = load_hf_model(path)
    reference = T.GPT2LMHeadModel.from_pretrained(path).eval()
    ids = torch.randint(0, 256, (2, 20))
    assert torch.allclose(lm.logits(ids), reference(ids).logits, atol=1e-5)
    assert not any(type(m).__name__ == "Conv1D" for m in lm.model.modules())
    assert isinstance(lm.model.transformer.h[0].attn.c_attn, nn.Linear)


def test_masked_positions_are_seeded_and_skip_special_tokens(tmp_path, no_network):
    lm = load_hf_model(save_family("bert", tmp_path / "bert"))
    assert (lm.task, lm.mask_token_id) == ("masked", 258)
    ids = lm.encode(TEXT)
    assert ids[0] == 256 and ids[-1] == 257  # [CLS] ... [SEP] around the document
    seq = token_sequences(ids, 32, count=8, seed=0)
    mask = masked_positions(lm, seq, seed=3)
    assert mask.shape == (8, 32) and bool(mask.any(dim=1).all())
    assert torch.equal(mask, masked_positions(lm, seq, seed=3))
    assert not torch.equal(mask, masked_positions(lm, seq, seed=4))
    assert not bool(mask[torch.isin(seq[:, :-1], torch.tensor(lm.special_ids))].any())
    assert 0.05 < float(mask.float().mean()) < 0.3
    assert perplexity(lm, seq, batch_size=3, progress=False) == pytest.approx(
        perplexity(lm, seq, batch_size=8, progress=False), rel=1e-12)
    assert perplexity(lm, seq, progress=False) == pytest.approx(math.exp(sequence_loss(lm, seq).item()), rel=1e-5)


def test_family_and_task_errors(tmp_path, capsys, no_network):
    from transformers import T5Config

    T5Config(d_model=64, d_ff=128, num_layers=1, num_heads=4).save_pretrained(tmp_path / "t5")
    with pytest.raises(ValueError, match=r"has model_type 't5', which is neither a causal nor a masked language "
                                         r"model .* through the Python API with your own loss"):
        load_hf_model(tmp_path / "t5")
    gpt2 = save_family("gpt2", tmp_path / "gpt2")
    with pytest.raises(ValueError, match=r"has model_type 'gpt2', which is not a masked language model "
                                         r"\(AutoModelForMaskedLM cannot load it\); --task causal loads it"):
        load_hf_model(gpt2, task="masked")
    with pytest.raises(ValueError, match=r"task must be one of causal, masked \(or None: from the model's config\), "
                                         r"not 'seq2seq'"):
        load_hf_model(gpt2, task="seq2seq")
    assert main(["quantize", "--task", "masked", *FAST, "--out", str(tmp_path / "q")]) == 2
    assert "the embedded model is a causal LM; task 'masked' needs a Hugging Face model directory" in \
        capsys.readouterr().err
    assert main(["quantize", "--seeds", "1", "2", *FAST, "--out", str(tmp_path / "q")]) == 2
    assert "--seeds repeats the sweep per calibration seed; add --sweep" in capsys.readouterr().err


def test_default_task_reads_the_architectures():
    from transformers import BertConfig, GPT2Config

    assert default_task(BertConfig(architectures=["BertForMaskedLM"])) == "masked"
    assert default_task(BertConfig(architectures=["BertLMHeadModel"])) == "causal"
    assert default_task(GPT2Config()) == "causal"


class Regressor(nn.Module):
    """No language model at all: a small MLP regressing a vector, the kind of model docs/policy.md §11
    quantizes through the Python API."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32), nn.GELU(), nn.Linear(32, 16))

    def forward(self, x):
        return self.net(x)


def test_python_api_with_the_users_own_loss():
    """The example of docs/policy.md §11, as written there."""
    from fgmp.golden.policy import build_plan, calibrate, quantized, select_linear_layers

    torch.manual_seed(0)
    model = Regressor()
    inputs, targets = torch.randn(64, 32), torch.randn(64, 16)
    samples = list(zip(inputs.split(8), targets.split(8)))               # what one Fisher sample is: your call

    def loss_fn(model, sample):                                          # a scalar loss per sample
        x, y = sample
        return nn.functional.mse_loss(model(x), y)

    layers = select_linear_layers(model)                                 # every nn.Linear (in_features % 16 == 0)
    cal = calibrate(model, samples, loss_fn, layers, progress=False)
    plan = build_plan(cal, policy="fgmp", fp8_fraction=0.3)
    with torch.no_grad():
        before = sum(loss_fn(model, s) for s in samples) / len(samples)
        with quantized(model, plan):
            after = sum(loss_fn(model, s) for s in samples) / len(samples)
    assert 0 < plan.activation_fp8_fraction < 1 and abs(plan.weight_fp8_fraction - 0.3) < 0.01
    assert after != before and abs(after / before - 1) < 0.2
