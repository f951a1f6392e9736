"""The FGMP policy (golden/policy): layer selection, Fisher hooks against hand-computed gradients, the
global FP8 budget, clipping, activation-unit calibration, plans under every policy, export round trip."""

import math

import pytest
import torch
from torch import nn

from fgmp import golden
from fgmp.golden.policy import (
    POLICIES, ActivationRule, block_scores, build_plan, calibrate, clip_nvfp4_scales, estimate_fisher,
    export_layer, load_layer, quantize_weight, quantized, scale_exponent, select_linear_layers,
    sensitivity_codes, top_fraction, unit_threshold, weighted_error,
)


class Toy(nn.Module):
    """Embedding -> residual MLP -> head: the first Linear's input needs no gradient upstream."""

    def __init__(self, vocab=64, width=32):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.fc1 = nn.Linear(width, 2 * width)
        self.fc2 = nn.Linear(2 * width, width)
        self.head = nn.Linear(width, vocab)

    def forward(self, ids):
        h = self.embed(ids)
        return self.head(h + self.fc2(torch.relu(self.fc1(h))))


def toy_loss(model, sample):
    return nn.functional.cross_entropy(model(sample[:-1]), sample[1:])


@pytest.fixture(scope="module")
def toy():
    torch.manual_seed(0)
    model = Toy()
    samples = [torch.randint(0, 64, (33,)) for _ in range(6)]
    return model, samples


@pytest.fixture(scope="module")
def calibration(toy):
    model, samples = toy
    return calibrate(model, samples, toy_loss, select_linear_layers(model), progress=False)


def test_select_linear_layers_patterns_and_errors():
    model = Toy()
    assert list(select_linear_layers(model)) == ["fc1", "fc2", "head"]
    assert list(select_linear_layers(model, include="fc*")) == ["fc1", "fc2"]
    assert list(select_linear_layers(model, exclude=["head"])) == ["fc1", "fc2"]
    with pytest.raises(ValueError, match=r"Pattern 'mlp\.\*' matches no nn.Linear layer"):
        select_linear_layers(model, include="mlp.*")
    with pytest.raises(ValueError, match="leave no layer to quantize"):
        select_linear_layers(model, exclude="*")
    with pytest.raises(ValueError, match=r"Layer 'fc1' has 32 input features, not a multiple of the block size 24"):
        select_linear_layers(model, block_size=24)
    with pytest.raises(ValueError, match="no nn.Linear layers"):
        select_linear_layers(nn.ReLU())
    with pytest.raises(TypeError, match="Model must be a torch.nn.Module"):
        select_linear_layers("model")
    with pytest.raises(TypeError, match="include must be a string or a sequence of strings"):
        select_linear_layers(model, include=[1])


def test_fisher_matches_per_sample_squared_gradients(toy):
    model, samples = toy
    layers = select_linear_layers(model)
    fisher = estimate_fisher(model, samples, toy_loss, layers, progress=False)
    expected_w = {name: torch.zeros_like(layer.weight) for name, layer in layers.items()}
    expected_x = {name: torch.zeros(layer.in_features, dtype=torch.float64) for name, layer in layers.items()}
    for sample in samples:
        # Each layer's input is its own node: the activation Fisher is dL/dx through that layer only.
        embedded = model.embed(sample[:-1]).detach().requires_grad_(True)
        x1 = embedded.clone()  # fc1's input apart from the residual branch
        x2 = torch.relu(model.fc1(x1))
        x3 = embedded + model.fc2(x2)
        loss = nn.functional.cross_entropy(model.head(x3), sample[1:])
        grads = torch.autograd.grad(loss, [x1, x2, x3] + [layer.weight for layer in layers.values()])
        for (name, layer), gx, gw in zip(layers.items(), grads[:3], grads[3:]):
            expected_x[name] += gx.double().pow(2).sum(dim=0)
            expected_w[name] += gw.pow(2)
    tokens = len(samples) * 32
    for name in layers:
        assert torch.allclose(fisher[name].weight, expected_w[name] / len(samples), rtol=1e-5, atol=0)
        assert torch.allclose(fisher[name].activation.double(), expected_x[name] / tokens, rtol=1e-5, atol=0)
        assert fisher[name].samples == len(samples) and fisher[name].tokens == tokens
        assert fisher[name].weight.abs().sum() > 0 and fisher[name].activation.abs().sum() > 0
    assert fisher["fc1"].input_amax == pytest.approx(float(model.embed.weight.detach().abs().max()), rel=1e-6)
    assert all(p.requires_grad and p.grad is None for p in model.parameters())  # restored


def test_fisher_errors(toy):
    model, samples = toy
    layers = select_linear_layers(model)
    with pytest.raises(ValueError, match="No calibration samples"):
        estimate_fisher(model, [], toy_loss, layers, progress=False)
    with pytest.raises(ValueError, match="loss_fn must return a scalar tensor"):
        estimate_fisher(model, samples, lambda m, s: m(s[:-1]), layers, progress=False)
    with pytest.raises(ValueError, match="non-finite loss"):
        estimate_fisher(model, samples, lambda m, s: toy_loss(m, s) * math.inf, layers, progress=False)
    with pytest.raises(ValueError, match="No layers"):
        estimate_fisher(model, samples, toy_loss, {}, progress=False)


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.2, 0.3, 0.5, 0.77, 1.0])
def test_global_threshold_hits_the_fraction_within_one_block(fraction):
    generator = torch.Generator().manual_seed(1)
    scores = {"a": torch.rand(7, 5, generator=generator), "b": torch.rand(3, 11, generator=generator),
              "ties": torch.full((4, 4), 0.5)}
    decisions, threshold = top_fraction(scores, fraction)
    total = sum(s.numel() for s in scores.values())
    chosen = sum(int(d.sum()) for d in decisions.values())
    assert abs(chosen - fraction * total) <= 0.5 + 1e-9
    flat_scores = torch.cat([s.reshape(-1) for s in scores.values()])
    flat_chosen = torch.cat([d.reshape(-1) for d in decisions.values()])
    if 0 < chosen < total:  # one global threshold: every FP8 block scores at least every NVFP4 block
        assert flat_scores[flat_chosen].min() >= flat_scores[~flat_chosen].max()
        assert threshold == float(flat_scores[flat_chosen].min())
    with pytest.raises(ValueError, match=r"FP8 fraction must be a number in \[0, 1\], not 1.5"):
        top_fraction(scores, 1.5)


def _heavy_tailed(shape, seed):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator) * torch.rand(shape, generator=generator).pow(4) * 3


def test_clipping_is_never_worse_and_often_better():
    weight = _heavy_tailed((32, 128), 2)
    fisher = torch.rand(32, 128, generator=torch.Generator().manual_seed(3)).pow(3)
    plain = golden.quantize_nvfp4(weight)
    clipped = quantize_weight(weight, torch.tensor(False), fisher, clipping=True)
    plain_error, clipped_error = weighted_error(weight, fisher, plain), weighted_error(weight, fisher, clipped)
    assert bool((clipped_error <= plain_error).all())
    assert int((clipped_error < plain_error).sum()) > plain_error.numel() // 10
    assert bool((clipped.scales <= plain.scales).all()) and bool((clipped.scales >= plain.scales - 7).all())
    # Zero Fisher: every candidate ties, so the amax-derived scale stays.
    assert torch.equal(clip_nvfp4_scales(weight, torch.zeros_like(weight)), plain.scales)
    # FP8 blocks keep their amax scales when clipping is on.
    precision = torch.rand(32, 8, generator=torch.Generator().manual_seed(4)) < 0.5
    mixed = quantize_weight(weight, precision, fisher, clipping=True)
    assert torch.equal(mixed.scales[precision], golden.quantize_fp8(weight).scales[precision])
    with pytest.raises(ValueError, match="Clipping needs the weight's Fisher information"):
        quantize_weight(weight, precision, clipping=True)
    with pytest.raises(ValueError, match="Clipping candidates must be a positive integer, not 0"):
        clip_nvfp4_scales(weight, fisher, candidates=0)


def test_block_scores_fgmp_is_the_fisher_weighted_downgrade():
    weight = _heavy_tailed((4, 32), 5)
    fisher = torch.rand(4, 32, generator=torch.Generator().manual_seed(6))
    delta = (golden.dequantize(golden.quantize_nvfp4(weight), dtype=torch.float64)
             - golden.dequantize(golden.quantize_fp8(weight), dtype=torch.float64))
    expected = (fisher.double() * delta.pow(2)).reshape(4, 2, 16).sum(dim=-1)
    assert torch.allclose(block_scores(weight, fisher, "fgmp"), expected, rtol=1e-12)
    assert torch.equal(block_scores(weight, fisher, "magnitude"), weight.abs().reshape(4, 2, 16).amax(-1).double())
    with pytest.raises(ValueError, match="Score kind must be one of fgmp, unweighted, magnitude, random, not 'x'"):
        block_scores(weight, fisher, "x")


def test_activation_calibration_helpers():
    assert scale_exponent(2688.0) == 0 and scale_exponent(2689.0) == 1 and scale_exponent(1.0) == -11
    assert scale_exponent(0.0) == 0 and scale_exponent(math.inf) == 0 and scale_exponent(1e300) == 127
    codes, e = sensitivity_codes(torch.tensor([1e-6, 3e-6, 0.0]))
    top = float(golden.decode(codes[1:2], golden.UE4M3))
    assert 224 < top <= 448 and int(codes[2]) == 0 and 3e-6 * 2.0**e == pytest.approx(top, rel=1 / 16)
    zero_codes, zero_e = sensitivity_codes(torch.zeros(4))
    assert torch.equal(zero_codes, torch.zeros(4, dtype=torch.uint8)) and zero_e == 0
    assert unit_threshold(1.5, 2, 3) == 1.5 * 2.0 ** (3 - 4) and unit_threshold(math.inf, 0, 0) == math.inf
    assert unit_threshold(-math.inf, 0, 0) == 0.0


def test_software_rule_matches_the_unit_on_finite_blocks():
    """The baselines' software quantizer (quantize_blocks at G = 2**k) and the activation unit's golden
    model emit the same blocks when they make the same decisions."""
    x = (torch.randn(64, 128) * torch.rand(64, 1).pow(3) * 50).to(torch.bfloat16)
    config = golden.ActivationConfig(scale_exponent=-3, threshold=2.0**-10,
                                      sensitivities=torch.randint(0, 0x7F, (128,), dtype=torch.uint8))
    unit = golden.quantize_activations(x, config).blocks
    software = golden.quantize_blocks(x, unit.precision, scale=2.0**-3)
    for field in ("codes", "scales", "precision", "global_scale"):
        assert torch.equal(getattr(unit, field), getattr(software, field))


@pytest.mark.parametrize("policy", POLICIES)
def test_plans_hit_the_budget_and_run(toy, calibration, policy):
    model, samples = toy
    plan = build_plan(calibration, policy=policy, fp8_fraction=0.3, clipping=policy == "fgmp")
    blocks = sum(bt.precision.numel() for bt in plan.weights.values())
    expected = {"fp8": 1.0, "nvfp4": 0.0}.get(policy, 0.3)
    if policy == "layerwise":  # whole layers: never above the budget
        assert plan.weight_fp8_fraction <= 0.3
    else:
        assert abs(plan.weight_fp8_fraction * blocks - expected * blocks) <= 0.5 + 1e-9
    elements = sum(layer.weight.numel() for layer in calibration.layers.values())
    fp8_blocks = round(plan.weight_fp8_fraction * blocks)
    assert plan.bits_per_weight == pytest.approx((fp8_blocks * 137 + (blocks - fp8_blocks) * 73) / elements)
    before = {name: layer.weight.detach().clone() for name, layer in calibration.layers.items()}
    with torch.no_grad(), quantized(model, plan):
        for name, layer in calibration.layers.items():
            assert torch.equal(layer.weight, golden.dequantize(plan.weights[name]))
        loss = float(toy_loss(model, samples[0]))
    assert math.isfinite(loss)
    assert all(torch.equal(layer.weight, before[name]) for name, layer in calibration.layers.items())
    if policy in ("fp8", "nvfp4"):
        assert plan.activation_fp8_fraction == expected


def test_activation_threshold_hits_the_fraction_on_calibration_data(toy, calibration):
    """On the very activations it was calibrated on (the unquantized model's layer inputs), the unit's
    rule with the calibrated T_l reproduces the requested FP8 fraction (only FP32 rounding of T_l could
    move a block)."""
    model, samples = toy
    inputs = {}
    hooks = [layer.register_forward_pre_hook(lambda m, a, n=name: inputs.setdefault(n, []).append(a[0].detach()))
             for name, layer in calibration.layers.items()]
    with torch.no_grad():
        for sample in samples:
            toy_loss(model, sample)
    for hook in hooks:
        hook.remove()
    for fraction in (0.1, 0.3, 0.5):
        plan = build_plan(calibration, policy="fgmp", fp8_fraction=fraction)
        for name, xs in inputs.items():
            for x in xs:
                plan.activations[name].quantize(x)
        fp8 = sum(rule.fp8_blocks for rule in plan.activations.values())
        blocks = sum(rule.blocks for rule in plan.activations.values())
        assert plan.activation_fp8_fraction == fp8 / blocks
        assert fp8 == pytest.approx(fraction * blocks, abs=1)


def test_export_round_trip(calibration, tmp_path):
    plan = build_plan(calibration, policy="fgmp", fp8_fraction=0.3)
    name = "fc2"
    path = export_layer(plan.weights[name], plan.activations[name].config, tmp_path / name, name=name)
    loaded = load_layer(path.parent)
    original = plan.weights[name]
    for field in ("codes", "scales", "precision", "global_scale"):
        assert torch.equal(getattr(loaded.weights, field), getattr(original, field))
    assert torch.equal(golden.dequantize(loaded.weights).view(torch.int32),
                       golden.dequantize(original).view(torch.int32))
    config = plan.activations[name].config
    assert loaded.activation.scale_exponent == config.scale_exponent
    assert loaded.activation.threshold_bits == config.threshold_bits
    assert torch.equal(loaded.activation.sensitivities, config.sensitivities)
    lines = [l for l in (tmp_path / name / "weights.hex").read_text().splitlines() if not l.startswith("//")]
    assert len(lines) == original.precision.numel() and all(len(l) == 35 for l in lines)  # 137-bit words


def test_export_errors(calibration, tmp_path):
    plan = build_plan(calibration, policy="fgmp", fp8_fraction=0.3)
    weights, config = plan.weights["fc2"], plan.activations["fc2"].config
    with pytest.raises(TypeError, match="Activation must be the unit's ActivationConfig"):
        export_layer(weights, None, tmp_path)
    with pytest.raises(ValueError, match="The sensitivity table has 32 channels, the weights 64 input channels"):
        export_layer(weights, plan.activations["fc1"].config, tmp_path)
    with pytest.raises(FileNotFoundError, match="not an exported layer directory"):
        load_layer(tmp_path / "nowhere")
    export_layer(weights, config, tmp_path / "bad")
    hex_path = tmp_path / "bad" / "weights.hex"
    hex_path.write_text(hex_path.read_text() + "zz\n")
    with pytest.raises(ValueError, match="is not a hexadecimal word"):
        load_layer(tmp_path / "bad")
    hex_path.write_text("\n".join(hex_path.read_text().splitlines()[:-2]) + "\n")
    with pytest.raises(ValueError, match="holds .* words, the manifest calls for"):
        load_layer(tmp_path / "bad")


def test_build_plan_and_quantized_errors(toy, calibration):
    model, _ = toy
    with pytest.raises(ValueError, match="Policy must be one of fgmp, unweighted"):
        build_plan(calibration, policy="best")
    with pytest.raises(ValueError, match=r"FP8 fraction must be a number in \[0, 1\], not -0.1"):
        build_plan(calibration, fp8_fraction=-0.1)
    with pytest.raises(TypeError, match="Expected a Calibration"):
        build_plan(None)
    plan = build_plan(calibration, policy="nvfp4")
    with pytest.raises(ValueError, match="quantizes layers the model does not have"):
        with quantized(nn.Sequential(nn.Linear(16, 16)), plan):
            pass
    with pytest.raises(TypeError, match="Expected a QuantizationPlan"):
        with quantized(model, None):
            pass
    assert isinstance(plan.activations["fc1"], ActivationRule)


def test_quantize_blocks_with_given_scales():
    x = _heavy_tailed((2, 32), 7)
    plain = golden.quantize_nvfp4(x)
    same = golden.quantize_blocks(x, torch.tensor(False), block_scales=plain.scales)
    assert torch.equal(same.codes, plain.codes) and torch.equal(same.scales, plain.scales)
    with pytest.raises(TypeError, match="Block scales must be a uint8 tensor of UE4M3 codes"):
        golden.quantize_blocks(x, torch.tensor(False), block_scales=plain.scales.long())
    with pytest.raises(ValueError, match=r"Block scales of shape \(2,\) do not match the \(2, 2\) blocks"):
        golden.quantize_blocks(x, torch.tensor(False), block_scales=plain.scales[:, 0])
    with pytest.raises(ValueError, match=r"Block scales must be finite UE4M3 codes \(0x00..0x7E\)"):
        golden.quantize_blocks(x, torch.tensor(False), block_scales=torch.full((2, 2), 0x7F, dtype=torch.uint8))


class _Tied(nn.Module):
    """Two Linear layers sharing one weight, and a third of its own."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(32, 32, bias=False)
        self.b = nn.Linear(32, 32, bias=False)
        self.b.weight = self.a.weight
        self.c = nn.Linear(32, 16)

    def forward(self, x):
        return self.c(torch.tanh(self.b(torch.tanh(self.a(x)))))


@pytest.mark.parametrize("make", [Toy, _Tied])
def test_fisher_from_backward_hooks_is_the_plain_per_sample_square(make):
    """The weight Fisher is added as each gradient is ready (and the gradient freed): bit-identical to one
    backward per sample followed by acc += grad.pow(2), shared weights included (each sharing layer gets
    the weight's whole gradient)."""
    import copy

    torch.manual_seed(1)
    model = make()
    if make is Toy:
        samples = [torch.randint(0, 64, (33,)) for _ in range(3)]
        loss_fn = toy_loss
    else:
        samples = [torch.randn(5, 32) for _ in range(3)]
        loss_fn = lambda m, x: m(x).pow(2).mean()  # noqa: E731
    layers = select_linear_layers(model)
    fisher = estimate_fisher(model, samples, loss_fn, layers, progress=False)
    twin = copy.deepcopy(model)
    twin_layers = select_linear_layers(twin)
    expected = {name: torch.zeros_like(layer.weight) for name, layer in twin_layers.items()}
    for sample in samples:
        twin.zero_grad(set_to_none=True)
        loss_fn(twin, sample).backward()
        for name, layer in twin_layers.items():
            expected[name] += layer.weight.grad.pow(2)
    for name in layers:
        assert torch.equal(fisher[name].weight.view(torch.int32), expected[name].div_(3).view(torch.int32)), name
    assert all(p.grad is None for p in model.parameters())
