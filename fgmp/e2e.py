"""``fgmp e2e``: one layer of a quantized model through the generated engine, bit for bit against the
golden engine, with the model's perplexity and weight memory beside it."""

import json
import sys
import time
from pathlib import Path

import torch

__all__ = ["add_commands", "capture_layer_input", "capture_layer_inputs", "engine_params", "run_e2e",
           "reporting_errors"]

DEFAULT_LAYER = "blocks.0.mlp.up_proj"  # an MLP projection of the embedded model
# The energy proxy's units, in the order of its cases: the shared and split FGMP datapaths, the baseline.
ENERGY_UNITS = ("FGMP", "FGMP split", "FP8-only")


def capture_layer_input(setup, plan, name, tokens):
    """The layer's BF16 input for the first ``tokens`` tokens of the evaluation windows, with the model
    running under ``plan`` (so upstream layers are quantized as deployed)."""
    return capture_layer_inputs(setup, plan, [name], tokens)[name]


def capture_layer_inputs(setup, plan, names, tokens):
    """{name: BF16 input (tokens x in_features)} of the layers ``names`` in one pass of the model under
    ``plan``, as capture_layer_input."""
    from fgmp.golden.policy import quantized

    captured = {name: [] for name in names}

    def hook_for(name):
        def hook(module, args):  # observes; the plan's own hook quantizes afterwards
            captured[name].append(args[0].detach().to(torch.bfloat16).cpu().reshape(-1, args[0].shape[-1]))
        return hook

    windows = -(-tokens // (setup.eval_sequences.shape[1] - 1))
    if windows > setup.eval_sequences.shape[0]:
        raise ValueError(f"{tokens} tokens need {windows} evaluation windows; raise --eval-samples")
    inputs = setup.eval_sequences[:windows, :-1]
    if setup.lm.task == "masked":  # the inputs the evaluation gives the model: its seeded masking (seed 0)
        from fgmp.golden.models import masked_positions
        inputs = inputs.masked_fill(masked_positions(setup.lm, setup.eval_sequences)[:windows], setup.lm.mask_token_id)
    handles = [setup.layers[name].register_forward_pre_hook(hook_for(name)) for name in names]
    try:
        with torch.no_grad(), quantized(setup.lm.model, plan):
            setup.lm.logits(inputs)
    finally:
        for handle in handles:
            handle.remove()
    return {name: torch.cat(parts)[:tokens].contiguous() for name, parts in captured.items()}


def _plots(plan, name, out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 3.5))
    precision = plan.weights[name].precision.float()
    axes.imshow(precision.T.numpy(), aspect="auto", cmap="viridis", interpolation="nearest")
    axes.set_xlabel("output channel")
    axes.set_ylabel("block along the reduction")
    axes.set_title(f"{name}: FP8 (yellow) / NVFP4 weight blocks, {precision.mean():.1%} FP8")
    figure.tight_layout()
    figure.savefig(out / "precision_map.png", dpi=110)
    plt.close(figure)

    names = list(plan.weights)
    figure, axes = plt.subplots(figsize=(8, 3.5))
    axes.bar(range(len(names)), [float(plan.weights[n].precision.float().mean()) * 100 for n in names])
    axes.set_xticks(range(len(names)), names, rotation=90, fontsize=6)
    axes.set_ylabel("FP8 weight blocks (%)")
    axes.set_title("FP8 fraction per layer under one global threshold")
    figure.tight_layout()
    figure.savefig(out / "fp8_per_layer.png", dpi=110)
    plt.close(figure)
    return [out / "precision_map.png", out / "fp8_per_layer.png"]


def engine_params(lanes, in_features):
    """The engine e2e generates for a layer with ``in_features`` inputs (its sensitivity table covers them)."""
    return {"lanes": lanes, "max_channels": max(16, in_features)}


def tile_params(lanes, weights, tokens):
    """The tile e2e generates for ``weights`` (M x K blocks): memories sized for the layer (each lane's high
    memory for the largest lane's FP8 blocks) and the narrowest activation unit that keeps up with L
    results per K/16 cycles."""
    from fgmp.golden.tile import tile_weight_bits

    outputs, inputs = weights.shape
    elements = next(e for e in (1, 2, 4, 8, 16) if lanes % e == 0 and e * inputs >= lanes * 16 or e == 16)
    if lanes % elements:
        raise ValueError(f"--lanes {lanes}: the tile's activation unit needs a width that divides the lanes")
    return {"lanes": lanes, "max_inputs": inputs, "max_outputs": outputs, "max_tokens": tokens,
            "fp8_weight_blocks": max(1, tile_weight_bits(weights, lanes)["max_lane_fp8_blocks"]),
            "elements_per_cycle": elements}


def next_layer(plan, name, outputs):
    """The quantized layer whose activation-unit registers the tile uses for ``name``'s outputs: the first
    one after it (in the plan's order) with ``outputs`` input channels; None if there is none."""
    names = list(plan.activations)
    later = names[names.index(name) + 1:] + names[:names.index(name)]
    return next((n for n in later if len(plan.activations[n].config.sensitivities) == outputs), None)


def _run_tile(args, plan, activations, out, pool):
    """The layer through the tile (``fgmp e2e --tile``), its steps submitted to ``pool``."""
    from fgmp.golden import quantize_activations
    from fgmp.golden.tile import tile_scale_bits
    from fgmp.sim.tile import run_tile_bench, save_layer

    weights = plan.weights[args.layer]
    blocks = quantize_activations(activations, plan.activations[args.layer].config).blocks
    following = next_layer(plan, args.layer, weights.shape[0])
    next_config = plan.activations[following].config if following else None
    path = save_layer(out / "tile_layer.pt", weights, blocks, tile_scale_bits(weights, blocks), next_config)
    params = tile_params(args.lanes, weights, activations.shape[0])
    return following, params, pool.submit(_timed, run_tile_bench, params, args.simulator, out / "sim",
                                          [{"file": str(path)}], idle=0.0, backpressure=0.0, refusals=False)


def _check_tools(args):
    """A missing simulator stops the run before minutes of calibration, not after."""
    from fgmp.toolchain import ToolchainError, require_iverilog, verilator_root

    if args.simulator == "icarus":
        require_iverilog()
    if args.simulator == "verilator":
        verilator_root()
    elif args.energy:  # toggle counting is Verilator's
        try:
            verilator_root()
        except ToolchainError as error:
            raise ToolchainError(f"{error} (the energy proxy needs Verilator; --no-energy skips it)") from None


def run_e2e(args, pool, say=print, on_started=lambda: None):
    """The e2e run described by the parsed ``args``; returns its summary (also written to e2e.json and
    e2e.md). The engine simulation and the energy proxy's syntheses, builds and simulations are steps of
    ``pool`` (fgmp.jobs): those that need no data start at once (``on_started`` is called after they are
    submitted), the rest while this thread evaluates the model's perplexity."""
    from fgmp.golden.policy import build_plan, export_layer
    from fgmp.quantize import FP8_BITS, HEADER, evaluate, prepare, row_line
    from fgmp.sim.layer import run_layer_bench

    if args.tokens < 1:
        raise ValueError(f"--tokens must be at least 1, not {args.tokens}")
    if args.energy_lanes < 1:
        raise ValueError(f"--energy-lanes must be at least 1, not {args.energy_lanes}")
    _check_tools(args)
    out = Path(args.out).resolve()  # every path below is handed to simulators running in other directories
    out.mkdir(parents=True, exist_ok=True)
    areas = None
    if args.energy:
        from fgmp.energy import submit_units
        areas = submit_units(ENERGY_UNITS, lanes=args.energy_lanes, out=out / "energy", pool=pool)
    on_started()
    setup = prepare(args.model, calib_samples=args.calib_samples, eval_samples=args.eval_samples,
                    progress=not args.quiet, task=args.task)
    if args.layer not in setup.layers:
        raise ValueError(f"Layer {args.layer!r} is not a quantized Linear layer of {setup.lm.name}; "
                         f"choose one of {', '.join(list(setup.layers)[:6])}, ...")
    plan = build_plan(setup.calibration, policy="fgmp", fp8_fraction=args.fp8_fraction, clipping=True)
    activations = capture_layer_input(setup, plan, args.layer, args.tokens)
    layer_dir = out / "layer"
    export_layer(plan.weights[args.layer], plan.activations[args.layer].config, layer_dir, name=args.layer)
    weights = plan.weights[args.layer]
    say(f"{setup.lm.name} / {args.layer}: {weights.shape[0]} x {weights.shape[1]} weights "
        f"({weights.fp8_fraction:.1%} FP8 blocks), {args.tokens} captured tokens -> {'tile' if args.tile else 'engine'} "
        f"({args.lanes} lanes) on {args.simulator}")
    if args.tile:
        following, params, bench = _run_tile(args, plan, activations, out, pool)
    else:
        bench = pool.submit(_timed, run_layer_bench, engine_params(args.lanes, weights.shape[1]), args.simulator,
                            out / "sim", layer_dir, activations)
    energy = _submit_energy(args, setup, plan, activations, out, pool, areas) if args.energy else None
    rows = []
    for policy in ("fp8", "fgmp", "nvfp4"):
        row_plan = plan if policy == "fgmp" else build_plan(setup.calibration, policy=policy, clipping=False)
        rows.append(evaluate(setup, row_plan, progress=not args.quiet))
    paths = _plots(plan, args.layer, out)
    result, seconds = bench.result()
    report = result.report
    if args.tile:
        report = _tile_report(report, params, following, plan.weights[args.layer], say)
        say(f"  simulation {seconds:.1f} s ({'built' if result.built else 'reused'} model)")
    else:
        _engine_report(report, seconds, result, say)
    say("\n" + HEADER)
    for row in rows:
        say(row_line(row))
    fgmp_row = rows[1]
    memory = 100 * (fgmp_row["bits_per_weight"] / FP8_BITS - 1)
    say(f"\nweight memory: {fgmp_row['bits_per_weight']:.3f} bits per weight vs {FP8_BITS:.3f} all-FP8 "
        f"({memory:+.1f} %); perplexity {100 * (fgmp_row['perplexity'] / rows[0]['perplexity'] - 1):+.2f} % "
        "vs all-FP8")
    summary = {"model": setup.lm.name, "task": setup.lm.task, "layer": args.layer, "simulator": args.simulator, "lanes": args.lanes,
               "bench": report, "simulation_seconds": seconds, "perplexity": rows,
               "bits_per_weight": {"fgmp": fgmp_row["bits_per_weight"], "fp8": FP8_BITS},
               "weight_memory_vs_fp8_percent": memory, "energy": None}
    _write_reports(summary, out)  # before the energy is in: a failure there keeps the results so far
    if energy is not None:
        summary["energy"] = _energy_summary(args.energy_lanes, energy, say)
        _write_reports(summary, out)
    say("wrote " + ", ".join(str(p) for p in [out / "e2e.json", out / "e2e.md", layer_dir, *paths]))
    return summary


def _timed(function, *args, **kwargs):
    start = time.perf_counter()
    return function(*args, **kwargs), time.perf_counter() - start


def _engine_report(report, seconds, result, say):
    outputs = report["tokens"] * report["out_features"]
    say(f"  outputs compared: {outputs} FP32 values, mismatches: {report['mismatches']}")
    say(f"  cycles: {report['cycles']} for {report['block_pairs']} block pairs "
        f"({report['block_pairs'] / report['cycles']:.3f} per cycle); simulation {seconds:.1f} s "
        f"({'built' if result.built else 'reused'} model)")
    say(f"  activation blocks in FP8: {report['activation_fp8_blocks']} of {report['activation_blocks']} "
        f"({report['activation_fp8_blocks'] / report['activation_blocks']:.1%})")


def _tile_report(report, params, following, weights, say):
    """The tile bench's report in the engine report's terms (the summary and e2e.md read those), plus the
    tile's own figures."""
    from fgmp.golden.tile import tile_weight_bits

    run = report["runs"][0]
    bits = tile_weight_bits(weights, params["lanes"], fp8_capacity=params["fp8_weight_blocks"])
    exact = tile_weight_bits(weights, params["lanes"])
    blocks = run["tokens"] * run["outputs"] // 16 if following else 0
    say(f"  tile ({params['lanes']} lanes, activation unit {params['elements_per_cycle']} element(s) per cycle) "
        f"loaded over AXI4-Lite: {run['tokens'] * run['outputs']} FP32 outputs"
        + (f" and {blocks} next-layer blocks (registers of {following})" if following else "")
        + f" compared, mismatches: {report['mismatches']}")
    say(f"  cycles: {run['cycles']} for {run['ideal_cycles']} block pairs per lane (utilisation "
        f"{run['utilisation']:.1%})")
    say(f"  weight memory: {exact['fgmp']:,} bits stored ({exact['fgmp'] / exact['fp8_only']:.3f}x an FP8-only "
        f"tile's {exact['fp8_only']:,}); generated {bits['fgmp']:,} bits ({bits['fgmp'] / bits['fp8_only']:.3f}x), "
        f"high memories sized for the fullest lane ({exact['max_lane_fp8_blocks']} FP8 blocks)")
    return {**report, "tokens": run["tokens"], "out_features": run["outputs"], "cycles": run["cycles"],
            "block_pairs": run["ideal_cycles"] * params["lanes"], "activation_fp8_blocks": run["next_fp8_blocks"],
            "activation_blocks": blocks, "tile": {**run, "params": params, "next_layer": following,
                                                  "weight_bits": exact, "generated_weight_bits": bits}}


def _run(args):
    from fgmp.jobs import step_pool, torch_threads_beside

    jobs = args.jobs
    with step_pool(jobs) as pool:
        torch.set_num_threads(args.threads if args.threads is not None else torch_threads_beside(jobs))
        try:
            summary = run_e2e(args, pool)
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise
    return 0 if summary["bench"]["mismatches"] == 0 else 1


def _write_reports(summary, out):
    (out / "e2e.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "e2e.md").write_text(_markdown(summary))


def _submit_energy(args, setup, plan, activations, out, pool, areas):
    """The energy proxy (fgmp/energy.py) of the FGMP dot unit's shared and split datapaths under ``plan``
    against the FP8-only unit running the same layer and tokens all in FP8, its steps submitted to
    ``pool``; returns the function that waits for the result."""
    from fgmp.energy import fgmp_case, submit_layer, uniform_case

    cases = [*(fgmp_case(unit, plan, args.layer, activations, unit=unit) for unit in ENERGY_UNITS[:2]),
             uniform_case("FP8-only", setup.calibration, args.layer, activations, "fp8")]
    return submit_layer(cases, lanes=args.energy_lanes, out=out / "energy", pool=pool, areas=areas)


def _energy_summary(lanes, collect, say):
    from fgmp.energy import energy_rows

    rows = energy_rows(collect())
    shared, split, fp8 = rows
    say(f"energy proxy ({lanes}-lane dot units, this layer and tokens, datapath only): FGMP shared "
        f"{shared['energy_per_block_pair']:.0f}, split {split['energy_per_block_pair']:.0f}, FP8-only "
        f"{fp8['energy_per_block_pair']:.0f} transistor-toggles per block pair ({_change(shared)} and "
        f"{_change(split)} vs FP8-only; the paper reports -14 % for its design with buffer reads); the whole "
        "model, buffer reads and picojoules: docs/results.md")
    return {"lanes": lanes, "rows": rows}


def _change(row):
    return f"{100 * (row['vs_baseline'] - 1):+.1f} %"


def _markdown(summary):
    bench = summary["bench"]
    lines = [f"# fgmp e2e: {summary['model']} / `{summary['layer']}`", "",
             f"{'Tile' if 'tile' in bench else 'Engine'} ({summary['lanes']} lanes) on {summary['simulator']}: {bench['tokens'] * bench['out_features']} "
             f"outputs compared bit for bit, **{bench['mismatches']} mismatches**; {bench['cycles']} cycles for "
             f"{bench['block_pairs']} block pairs; activation blocks in FP8: {bench['activation_fp8_blocks']} of "
             f"{bench['activation_blocks']}.", "",
             f"| policy | {'masked-token perplexity' if summary.get('task') == 'masked' else 'perplexity'} | "
             "bits per weight |", "|---|---|---|"]
    lines += [f"| {row['policy']} | {row['perplexity']:.4f} | {row['bits_per_weight']:.3f} |"
              for row in summary["perplexity"]]
    lines += ["", f"Weight memory: {summary['weight_memory_vs_fp8_percent']:+.1f} % vs all-FP8 (the paper: -30 %).", ""]
    if summary["energy"]:
        lines += [f"Energy proxy ({summary['energy']['lanes']}-lane dot units; transistor-toggles per block pair, "
                  "docs/results.md):", "", "| unit | FP8 weights | FP8 activations | energy | vs FP8-only |",
                  "|---|---|---|---|---|"]
        lines += [f"| {r['label']} | {100 * r['weight_fp8']:.1f} % | {100 * r['activation_fp8']:.1f} % | "
                  f"{r['energy_per_block_pair']:.0f} | {r['vs_baseline']:.3f} |" for r in summary["energy"]["rows"]]
        lines.append("")
    return "\n".join(lines)


def reporting_errors(run):
    """``run(args)`` as a command: a usage error exits 2 and a simulation or synthesis that failed exits
    1, each with its message rather than a traceback."""
    def command(args):
        from fgmp.flow.tools import FlowError
        from fgmp.sim.runner import BenchFailure
        from fgmp.toolchain import ToolchainError

        try:
            return run(args)
        except (ValueError, FileNotFoundError, ToolchainError) as error:
            print(f"fgmp: error: {error}", file=sys.stderr)
            return 2
        except (BenchFailure, FlowError) as error:
            print(f"fgmp: error: {error}", file=sys.stderr)
            return 1

    return command


def add_commands(commands):
    from fgmp.golden.models import TASKS
    from fgmp.jobs import default_jobs
    from fgmp.sim.runner import SIMULATORS

    e2e = commands.add_parser("e2e", help="a quantized model's layer through the generated engine, bit for bit")
    e2e.add_argument("--model", help="a local Hugging Face causal- or masked-LM directory (default: the embedded "
                     "tiny LM); its context must hold 256 tokens")
    e2e.add_argument("--task", choices=TASKS, help="causal: next-token perplexity; masked: seeded masked-token "
                     "perplexity, the layer's input captured from the masked windows (default: from the config)")
    e2e.add_argument("--layer", default=DEFAULT_LAYER, help=f"the Linear layer to run (default {DEFAULT_LAYER})")
    e2e.add_argument("--fp8-fraction", type=float, default=0.3)
    e2e.add_argument("--tokens", type=int, default=4, help="captured tokens streamed through the engine")
    e2e.add_argument("--lanes", type=int, default=4)
    e2e.add_argument("--simulator", choices=SIMULATORS, default="verilator")
    e2e.add_argument("--tile", action="store_true",
                     help="run the layer through the FGMP tile (memories loaded over AXI4-Lite, next-layer blocks "
                          "by its activation unit) instead of the streaming engine")
    e2e.add_argument("--calib-samples", type=int, default=16)
    e2e.add_argument("--eval-samples", type=int, default=16)
    e2e.add_argument("--energy-lanes", type=int, default=1,
                     help="lanes of the dot units the energy proxy compares (default 1: builds fastest)")
    e2e.add_argument("--no-energy", dest="energy", action="store_false",
                     help="skip the energy proxy (it needs Verilator and Yosys whatever --simulator says)")
    e2e.add_argument("--threads", type=int,
                     help="torch threads (default: the cores the parallel steps leave free, at least 1)")
    e2e.add_argument("--jobs", type=int, default=default_jobs(),
                     help=f"simulations and syntheses run side by side (default {default_jobs()}: cores, at most 4)")
    e2e.add_argument("--quiet", action="store_true")
    e2e.add_argument("--out", type=Path, default=Path("out/e2e"))
    e2e.set_defaults(func=reporting_errors(_run))
