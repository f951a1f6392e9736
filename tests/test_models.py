"""fgmp.golden.models: the tiny LM, the stdlib corpus, the shipped weights, Hugging Face loading, evaluation."""

import base64
import json
import math
import socket
import warnings

import pytest
import torch
from torch import nn

from fgmp.golden import models
from fgmp.golden.models import corpus as corpus_mod
from fgmp.golden.models import (
    TinyLM, TinyLMConfig, default_corpus, load_default_model, load_hf_causal_lm, load_model, perplexity,
    pick_device, read_text, sequence_loss, token_sequences,
)
from fgmp.golden.models.lm import load_metadata
from fgmp.golden.models.train import main as train_main

TINY = TinyLMConfig(d_model=32, n_layers=1, n_heads=2, d_ff=64, context=32)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # On a shared 2-core machine two OpenMP threads stall whenever another process holds a core
    # (about 5x slower here); one thread is also how the recorded figures were measured.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(scope="module")
def shipped():
    return load_default_model("cpu"), load_metadata()


# --- the tiny LM ----------------------------------------------------------------------------------

def test_tiny_lm_shapes_and_linear_dims():
    cfg = TinyLMConfig()
    model = TinyLM(cfg)
    logits = model(torch.randint(0, 256, (2, 17)))
    assert logits.shape == (2, 17, 256) and logits.dtype == torch.float32
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    assert len(linears) == 6 * cfg.n_layers + 1 and "lm_head" in linears
    assert all(m.in_features % 16 == 0 and m.bias is None for m in linears.values())
    # Every 2-D weight except the embedding is a Linear's: the policy sees every matmul.
    matrices = {n for n, p in model.named_parameters() if p.dim() == 2} - {"embed.weight"}
    assert matrices == {n + ".weight" for n in linears}


def test_tiny_lm_is_causal():
    torch.manual_seed(0)
    model = TinyLM(TINY).eval()
    ids = torch.randint(0, 256, (1, 20))
    changed = ids.clone()
    changed[0, 12] = (ids[0, 12] + 1) % 256
    with torch.no_grad():
        a, b = model(ids), model(changed)
    assert torch.equal(a[:, :12], b[:, :12]) and not torch.equal(a[:, 12:], b[:, 12:])


def test_tiny_lm_errors():
    with pytest.raises(ValueError, match=r"TinyLMConfig.d_model must be a multiple of 16 \(16-element quantization blocks\), got 40"):
        TinyLMConfig(d_model=40, n_heads=2)
    with pytest.raises(ValueError, match=r"d_model \(32\) must split into n_heads \(3\) heads of even size"):
        TinyLMConfig(d_model=32, n_heads=3, d_ff=64)
    with pytest.raises(ValueError, match=r"TinyLMConfig.n_layers must be a positive int, got 0"):
        TinyLMConfig(n_layers=0)
    with pytest.raises(ValueError, match=r"unknown TinyLMConfig fields: \['width'\]"):
        TinyLMConfig.from_dict({"width": 3})
    model = TinyLM(TINY)
    with pytest.raises(TypeError, match=r"TinyLM expects input_ids as a LongTensor of shape \[B, T\]"):
        model(torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"sequence length 33 outside 1..32 \(the model's context\)"):
        model(torch.zeros(1, 33, dtype=torch.long))


# --- corpus and windows --------------------------------------------------------------------------

def test_default_corpus_split_is_deterministic():
    c = default_corpus()
    assert c.sha256 == corpus_mod.corpus_sha256(c.train, c.eval)
    assert list(c.train_files) == sorted(c.train_files) and list(c.eval_files) == sorted(c.eval_files)
    assert not set(c.train_files) & set(c.eval_files)
    assert all(corpus_mod.is_eval_file(f) for f in c.eval_files)
    assert not any(corpus_mod.is_eval_file(f) for f in c.train_files)
    assert 0.05 < len(c.eval_files) / (len(c.train_files) + len(c.eval_files)) < 0.2
    assert "os.py" in c.train_files + c.eval_files
    assert not any(part in corpus_mod.EXCLUDED_DIRS for f in c.train_files + c.eval_files for part in f.split("/")[:-1])
    corpus_mod.build_corpus.cache_clear()
    assert default_corpus().sha256 == c.sha256


def test_corpus_rule_on_a_synthetic_tree(tmp_path):
    for rel in ["b.py", "a.py", "pkg/m.py", "test/t.py", "pkg/tests/t.py", "site-packages/x.py",
                "encodings/cp1.py", "config-3.11-x86_64/c.py", "_sysconfigdata__linux.py", "notes.txt"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(f"# {rel}\n", encoding="utf-8")
    assert corpus_mod.corpus_files(tmp_path) == ["a.py", "b.py", "pkg/m.py"]
    c = corpus_mod.build_corpus(str(tmp_path))
    assert sorted(c.train_files + c.eval_files) == ["a.py", "b.py", "pkg/m.py"]
    assert c.train == "\n".join(f"# {f}\n" for f in c.train_files)
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        corpus_mod.corpus_files(tmp_path / "missing")
    (tmp_path / "pkg/m.py").unlink()
    with pytest.raises(ValueError, match=r"no corpus files \(\*\.py\) under"):
        corpus_mod.build_corpus(str(tmp_path / "pkg"))  # what is left is below tests/


def test_corpus_warns_when_the_stdlib_differs(monkeypatch):
    monkeypatch.setattr(corpus_mod, "recorded_sha256", lambda: "0" * 64)
    with pytest.warns(RuntimeWarning, match="not the corpus the shipped tiny LM was trained and measured on"):
        default_corpus()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        default_corpus(check=False)


def test_token_sequences():
    ids = torch.arange(100)
    seq = token_sequences(ids, 9)
    assert seq.shape == (10, 10) and seq.dtype == torch.long and torch.equal(seq.flatten(), ids)
    seq = token_sequences(ids, 10)  # 9 windows of 11, tail of 1 dropped
    assert seq.shape == (9, 11) and torch.equal(seq[3], torch.arange(33, 44))
    sub = token_sequences(ids, 9, count=4, seed=1)
    assert torch.equal(sub, token_sequences(ids, 9, count=4, seed=1))
    assert not torch.equal(sub, token_sequences(ids, 9, count=4, seed=2))
    assert sub.shape == (4, 10) and (sub[1:, 0] > sub[:-1, 0]).all()
    assert all(int(w[0]) % 10 == 0 and torch.equal(w, torch.arange(int(w[0]), int(w[0]) + 10)) for w in sub)
    assert torch.equal(token_sequences(torch.arange(20, dtype=torch.uint8), 4)[1], torch.arange(5, 10))
    with pytest.raises(TypeError, match="token_sequences expects a 1-D integer tensor of token ids"):
        token_sequences(ids.view(10, 10), 4)
    with pytest.raises(ValueError, match="length must be a positive int, got 0"):
        token_sequences(ids, 0)
    with pytest.raises(ValueError, match=r"100 tokens are too few for one window of length 100 \+ 1"):
        token_sequences(ids, 100)
    with pytest.raises(ValueError, match=r"count must be an int in 1..10 \(the number of windows\), got 11"):
        token_sequences(ids, 9, count=11)


# --- the shipped weights -------------------------------------------------------------------------

def test_shipped_weights_reproduce_the_recorded_check_perplexity(shipped):
    lm, meta = shipped
    weights = corpus_mod.DATA_DIR / meta["weights_file"]
    assert weights.stat().st_size <= 4.5e6 and meta["config"] == lm.model.config.to_dict()
    assert all(p.dtype == torch.float32 for p in lm.model.parameters())
    assert all(p.equal(p.bfloat16().float()) for p in lm.model.parameters())  # BF16 values, float32 compute
    check = meta["check"]
    ids = torch.tensor(list(base64.b64decode(check["ids_base64"])), dtype=torch.long)
    seq = ids.view(check["windows"], check["length"] + 1)
    # The check slice ships with the metadata, so this holds whatever stdlib this machine has.
    assert perplexity(lm, seq, progress=False) == pytest.approx(check["perplexity"], rel=1e-4)
    assert meta["eval"]["perplexity"] < meta["eval"]["unigram_perplexity"] / 3


def test_shipped_weights_reproduce_the_recorded_eval_perplexity(shipped):
    lm, meta = shipped
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        c = default_corpus()
    if c.sha256 != meta["corpus"]["sha256"]:
        pytest.skip("this interpreter's stdlib is not the corpus the shipped figures were measured on")
    ev = meta["eval"]
    seq = token_sequences(lm.encode(c.eval), ev["length"], count=ev["windows"], seed=0)
    assert perplexity(lm, seq, batch_size=16, progress=False) == pytest.approx(ev["perplexity"], rel=1e-4)


def test_perplexity_is_exp_of_sequence_loss(shipped):
    lm, _ = shipped
    seq = token_sequences(lm.encode(read_text(corpus_mod.__file__)), 64, count=4, seed=3)
    loss = sequence_loss(lm, seq)
    assert perplexity(lm, seq, batch_size=3, progress=False) == pytest.approx(math.exp(loss.item()), rel=1e-5)
    loss.backward()  # Fisher estimates need gradients through every Linear
    assert lm.model.lm_head.weight.grad is not None and lm.model.blocks[0].attn.q_proj.weight.grad.abs().sum() > 0
    lm.model.zero_grad(set_to_none=True)


def test_evaluation_errors(shipped):
    lm, _ = shipped
    with pytest.raises(TypeError, match=r"sequences must be a LongTensor of shape \[N, length \+ 1\]"):
        perplexity(lm, torch.zeros(2, 5))
    with pytest.raises(ValueError, match=r"windows of length 300 exceed tiny-lm's context 256"):
        sequence_loss(lm, torch.zeros(1, 301, dtype=torch.long))
    with pytest.raises(ValueError, match="batch_size must be a positive int, got 0"):
        perplexity(lm, torch.zeros(1, 5, dtype=torch.long), batch_size=0)
    with pytest.raises(TypeError, match="encode expects str, got bytes"):
        lm.encode(b"x")
    assert torch.equal(lm.encode("aé"), torch.tensor([97, 0xC3, 0xA9]))


def test_train_script_is_deterministic(tmp_path):
    argv = ["--steps", "3", "--d-model", "32", "--n-heads", "2", "--d-ff", "64", "--n-layers", "1",
            "--context", "32", "--eval-windows", "8", "--quiet"]
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(2)  # train() must use its own --threads and restore this afterwards
    first = train_main(["--out", str(tmp_path / "a"), *argv])
    second = train_main(["--out", str(tmp_path / "b"), *argv])
    assert torch.get_num_threads() == 2 and torch.are_deterministic_algorithms_enabled() == deterministic
    torch.set_num_threads(threads)
    assert first["training"]["final_train_loss"] == second["training"]["final_train_loss"]
    assert first["eval"]["perplexity"] == second["eval"]["perplexity"]
    assert (tmp_path / "a/tiny_lm.safetensors").read_bytes() == (tmp_path / "b/tiny_lm.safetensors").read_bytes()
    meta = json.loads((tmp_path / "a/tiny_lm.json").read_text())
    assert meta["config"] == TINY.to_dict() and meta["training"]["steps"] == 3
    lm = load_default_model("cpu", data_dir=tmp_path / "a")
    seq = token_sequences(lm.encode(default_corpus(check=False).eval), 32, count=8, seed=0)
    assert perplexity(lm, seq, progress=False) == pytest.approx(meta["eval"]["perplexity"], rel=1e-4)


# --- Hugging Face models -------------------------------------------------------------------------

def _save_tiny_llama(path, with_tokenizer=True):
    from tokenizers import Tokenizer, decoders, models as tok_models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=4, vocab_size=300, max_position_embeddings=128,
                         bos_token_id=256, eos_token_id=257)
    LlamaForCausalLM(config).save_pretrained(path)
    if with_tokenizer:
        # Byte-level BPE without merges: 256 byte tokens, encodes any text, built and saved offline.
        vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
        vocab.update({"<s>": 256, "</s>": 257, "<unk>": 258})
        tok = Tokenizer(tok_models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        tok.decoder = decoders.ByteLevel()
        PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                unk_token="<unk>").save_pretrained(path)
    return path


def test_hf_causal_lm_loads_offline_and_evaluates(tmp_path, no_network):
    path = _save_tiny_llama(tmp_path / "tiny-llama")
    lm = load_hf_causal_lm(path, device="cpu")
    assert (lm.name, lm.context, lm.vocab_size, lm.device) == ("tiny-llama", 128, 300, torch.device("cpu"))
    assert next(lm.model.parameters()).dtype == torch.float32
    ids = lm.encode("def f(x):\n    return x + 1  # é\n" * 10)
    assert ids.dim() == 1 and ids.dtype == torch.long and ids.max() < 256
    seq = token_sequences(ids, 32, count=6, seed=0)
    assert lm.logits(seq).shape == (6, 33, 300)
    ppl = perplexity(lm, seq, batch_size=4, progress=False)
    assert 100 < ppl < 1000  # random init: about the vocabulary size
    assert ppl == pytest.approx(math.exp(sequence_loss(lm, seq).item()), rel=1e-5)
    same = load_model(str(path))
    assert torch.equal(same.logits(seq[:1]), lm.logits(seq[:1]))


def test_hf_loading_errors(tmp_path, no_network):
    with pytest.raises(FileNotFoundError, match=r"model directory '.*nowhere' does not exist \(only local Hugging Face directories are loaded; nothing is downloaded\)"):
        load_hf_causal_lm(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"model directory 'meta-llama/Llama-2-7b-hf' does not exist"):
        load_model("meta-llama/Llama-2-7b-hf")
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileNotFoundError, match=r"model path '.*file' is not a directory"):
        load_hf_causal_lm(tmp_path / "file")
    with pytest.raises(FileNotFoundError, match=r"model directory '.*' has no config.json"):
        load_hf_causal_lm(tmp_path)
    from transformers import T5Config
    T5Config().save_pretrained(tmp_path / "t5")
    with pytest.raises(ValueError, match=r"has model_type 't5', which is not a causal language model"):
        load_hf_causal_lm(tmp_path / "t5")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad/config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"config.json is not a usable Hugging Face config"):
        load_hf_causal_lm(tmp_path / "bad")
    _save_tiny_llama(tmp_path / "no-tok", with_tokenizer=False)
    with pytest.raises(FileNotFoundError, match=r"model directory '.*no-tok' has no tokenizer that loads offline"):
        load_hf_causal_lm(tmp_path / "no-tok")
    with pytest.raises(ValueError, match="pass either device or device_map, not both"):
        load_hf_causal_lm(tmp_path / "no-tok", device="cpu", device_map="auto")
    with pytest.raises(TypeError, match="model spec must be None, 'default' or a path, got int"):
        load_model(3)


# --- devices and text files ----------------------------------------------------------------------

def test_pick_device():
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device() == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(TypeError, match="device must be a str, a torch.device or None, got int"):
        pick_device(0)
    with pytest.raises(ValueError, match="invalid device 'gpu0'"):
        pick_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device 'cuda:1' requested but CUDA is not available"):
            pick_device("cuda:1")


def test_load_model_default_is_the_tiny_lm():
    lm = load_model("default", device="cpu")
    assert isinstance(lm.model, TinyLM) and lm.name == "tiny-lm" and lm.context == 256 and lm.vocab_size == 256


def test_read_text(tmp_path):
    (tmp_path / "ok.txt").write_text("héllo\n", encoding="utf-8")
    assert read_text(tmp_path / "ok.txt") == "héllo\n"
    with pytest.raises(FileNotFoundError, match=r"text file '.*missing.txt' does not exist"):
        read_text(tmp_path / "missing.txt")
    with pytest.raises(FileNotFoundError, match=r"text file '.*' is a directory, not a text file"):
        read_text(tmp_path)
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(UnicodeDecodeError, match=r"text file '.*latin1.txt' is not UTF-8"):
        read_text(tmp_path / "latin1.txt")
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(ValueError, match=r"text file '.*empty.txt' is empty"):
        read_text(tmp_path / "empty.txt")
    with pytest.raises(TypeError, match="text path must be a str or os.PathLike, got NoneType"):
        read_text(None)


def test_package_exports_the_contract():
    for name in ["CausalLM", "Corpus", "default_corpus", "load_default_model", "load_hf_causal_lm", "load_model",
                 "read_text", "token_sequences", "sequence_loss", "perplexity", "pick_device"]:
        assert name in models.__all__ and hasattr(models, name)
