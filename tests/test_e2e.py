"""``fgmp e2e`` on a tiny configuration: a real layer of the embedded model, quantized by the policy,
through the generated engine on Icarus, every output bit-exact; and the errors a user hits."""

import json

import pytest
import torch

from fgmp.cli import main

# The energy proxy has its own tests (tests/test_energy.py); here it would add two Verilator builds.
FAST = ["--calib-samples", "2", "--eval-samples", "2", "--threads", "1", "--quiet", "--no-energy"]


@pytest.fixture(autouse=True)
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """A working directory away from the checkout: the benches run in directories of their own, so a
    relative path handed to them would break here (tests/test_output_locations.py)."""
    cwd = tmp_path / "work" / "here"
    cwd.mkdir(parents=True)
    monkeypatch.chdir(cwd)
    return cwd


def _check_summary(out, tokens, capsys):
    summary = json.loads((out / "e2e.json").read_text())
    bench = summary["bench"]
    assert bench["mismatches"] == 0 and bench["checked"] == tokens * 192 + 1  # every output + the counters
    assert bench["block_pairs"] == (192 // 4) * tokens * (192 // 16)
    assert bench["cycles"] >= bench["block_pairs"]
    assert [row["policy"] for row in summary["perplexity"]] == ["fp8", "fgmp", "nvfp4"]
    assert summary["weight_memory_vs_fp8_percent"] == pytest.approx(-32.7, abs=0.1)
    assert summary["energy"] is None
    assert (out / "precision_map.png").stat().st_size > 0 and (out / "layer" / "weights.hex").is_file()
    assert "**0 mismatches**" in (out / "e2e.md").read_text()
    assert "mismatches: 0" in capsys.readouterr().out
    return summary


@pytest.mark.cocotb
def test_e2e_layer_is_bit_exact_on_icarus_with_a_relative_out(elsewhere, capsys):
    assert main(["e2e", *FAST, "--layer", "blocks.0.attn.q_proj", "--tokens", "1", "--simulator", "icarus",
                 "--out", "../e2e"]) == 0
    _check_summary(elsewhere.parent / "e2e", 1, capsys)


@pytest.mark.cocotb
def test_e2e_layer_is_bit_exact_on_verilator_in_the_default_out(elsewhere, capsys):
    """The engine is the one tests/test_actq_cocotb.py builds (the session shares built models)."""
    from fgmp.e2e import engine_params
    from test_actq_cocotb import ENGINE

    assert engine_params(4, 192) == {key: ENGINE[key] for key in ("lanes", "max_channels")}
    assert main(["e2e", *FAST, "--layer", "blocks.0.attn.q_proj", "--tokens", "2"]) == 0
    _check_summary(elsewhere / "out" / "e2e", 2, capsys)


@pytest.mark.cocotb
def test_layer_bench_takes_relative_directories(elsewhere):
    """sim.layer hands the bench (running in its own directory) the layer and its activations: given
    relative directories, what it writes into the bench's configuration must still be found."""
    from fgmp import golden
    from fgmp.golden.policy import export_layer
    from fgmp.sim.layer import run_layer_bench
    from test_actq_cocotb import ENGINE

    torch.manual_seed(0)
    weights = golden.quantize_blocks(torch.randn(8, 192), torch.rand(8, 12) < 0.3)
    config = golden.ActivationConfig(scale_exponent=0, threshold=0.0625,
                                     sensitivities=torch.full((192,), 0x38, dtype=torch.uint8))
    export_layer(weights, config, "layer")
    result = run_layer_bench(ENGINE, "verilator", "sim", "layer", torch.randn(2, 192).bfloat16())
    assert result.report["mismatches"] == 0 and result.report["checked"] == 2 * 8 + 1
    assert result.build_dir == elsewhere / "sim" / "verilator" / "fgmp_engine_l4"


DEMO_VERILOG = ["e2m1_decoder.v", "e4m3_decoder.v", "fgmp_actq.v", "fgmp_dot_l8.v", "fgmp_engine_l4.v",
                "fgmp_tile_l4.v", "ue4m3_decoder.v"]


def _demo_configurations_are_the_suites():
    """The demo's units are configurations the suite builds anyway (one build each per session)."""
    from fgmp import demo
    from test_actq_cocotb import ENGINE
    from test_dot_cocotb import CONFIGURATIONS

    assert demo.DOT == CONFIGURATIONS["fgmp_l8_p1"][0] and demo._engine() == {
        key: ENGINE[key] for key in ("lanes", "max_channels")}


@pytest.mark.cocotb
def test_demo_with_a_relative_out(elsewhere, capsys):
    """``fgmp demo`` on Verilator without the energy proxy (tests/test_energy.py measures that)."""
    _demo_configurations_are_the_suites()
    assert main(["demo", "--simulators", "verilator", "--no-energy", "--out", "../demo"]) == 0
    directory = elsewhere.parent / "demo"
    assert sorted(p.name for p in (directory / "verilog").glob("*.v")) == DEMO_VERILOG
    bench = json.loads((directory / "e2e" / "e2e.json").read_text())["bench"]
    assert bench["mismatches"] == 0 and bench["checked"] == 4 * 768 + 1
    printed = capsys.readouterr().out
    summary = printed[printed.index("Summary"):]
    assert "outputs of 6 unit suites and the end-to-end layer against the golden model: 0 mismatches" in summary
    assert "memory    5.763 bits per weight" in summary and "energy" not in summary
    assert f"outputs   {directory}" in summary


@pytest.mark.cocotb
def test_demo_in_its_default_out(elsewhere, capsys):
    """The units' checks alone (the end-to-end part's default directory is tested above and by e2e)."""
    _demo_configurations_are_the_suites()
    assert main(["demo", "--simulators", "verilator", "--no-e2e"]) == 0
    directory = elsewhere / "out" / "demo"
    assert sorted(p.name for p in (directory / "verilog").glob("*.v")) == DEMO_VERILOG
    assert not (directory / "e2e").exists()
    printed = capsys.readouterr().out
    summary = printed[printed.index("Summary"):]
    assert "outputs of 6 unit suites against the golden model: 0 mismatches" in summary
    assert "perplexity" not in summary and "memory" not in summary and f"outputs   {directory}" in summary


@pytest.mark.parametrize("args, message", [
    (["--layer", "blocks.0.nothing"], "Layer 'blocks.0.nothing' is not a quantized Linear layer of tiny-lm"),
    (["--layer", "lm_head"], "Layer 'lm_head' is not a quantized Linear layer"),
    (["--tokens", "0"], "--tokens must be at least 1, not 0"),
    (["--tokens", "600"], "600 tokens need 3 evaluation windows; raise --eval-samples"),
    (["--energy-lanes", "0"], "--energy-lanes must be at least 1, not 0"),
    (["--jobs", "0"], "--jobs must be at least 1, not 0"),
])
def test_e2e_errors(tmp_path, capsys, args, message):
    assert main(["e2e", *FAST, *args, "--simulator", "icarus", "--out", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err


def test_e2e_missing_simulator_is_a_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no iverilog anywhere
    assert main(["e2e", *FAST, "--layer", "blocks.0.attn.q_proj", "--tokens", "1", "--simulator", "icarus",
                 "--out", str(tmp_path)]) == 2
    assert "iverilog" in capsys.readouterr().err


def test_e2e_layer_shapes_not_divisible_by_the_block_size_are_a_clear_error(tmp_path, capsys):
    from tokenizers import Tokenizer, models as tok_models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path = tmp_path / "odd-llama"
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(hidden_size=40, intermediate_size=80, num_hidden_layers=1, num_attention_heads=4,
                                 num_key_value_heads=4, vocab_size=300, max_position_embeddings=512,
                                 bos_token_id=256, eos_token_id=257)).save_pretrained(path)
    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    vocab.update({"<s>": 256, "</s>": 257, "<unk>": 258})
    tok = Tokenizer(tok_models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                            unk_token="<unk>").save_pretrained(path)
    assert main(["e2e", *FAST, "--model", str(path), "--simulator", "icarus", "--out", str(tmp_path / "out")]) == 2
    assert "has 40 input features, not a multiple of the block size 16" in capsys.readouterr().err
