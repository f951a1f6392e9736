"""``fgmp demo``: the project's main job, sized for a person at a terminal.

Every unit is generated, linted and checked bit for bit against the golden model on each simulator:
the decoders on every code, the dot unit on random reductions with idle cycles and back-pressure (and
on every element code pair on Verilator, where that takes seconds), the activation unit and the engine
on random BF16 blocks under several configurations, the tile (Verilator) on random layers loaded and read
back over AXI4-Lite. Then a layer of the embedded model runs end to end
(``fgmp e2e``: perplexity, weight memory, the layer through the engine, the energy proxy). The
exhaustive suites on every configuration are the tests' (``make test``).

Simulations and syntheses run side by side (``--jobs``), and each configuration is built once: the
engine bench and the end-to-end run share one model (sim.runner's model store under ``<out>/models``,
which a second demo reuses).
"""

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Check", "run_demo", "add_command"]

# Configurations the test suite builds too (tests/test_e2e.py checks): a demo run inside the tests
# builds nothing new.
DOT = {"lanes": 8, "pipeline_stages": 1}
QUANTIZER = {"max_channels": 64, "pipeline_stages": 2}
ENGINE_LANES = 4
# The tile on random layers over AXI4-Lite (a second layer reads what the first wrote); Verilator only: the
# tile takes Icarus tens of milliseconds a cycle (its own test runs a smaller one there).
TILE = ({"lanes": 4, "max_inputs": 64, "max_outputs": 64, "max_tokens": 4, "elements_per_cycle": 2},
        [{"tokens": 3, "inputs": 64, "outputs": 32, "specials": False}, {"chain": True, "outputs": 48},
         {"tokens": 2, "inputs": 32, "outputs": 64, "fp8": 0.6, "x_base": 5}])


@dataclass(frozen=True)
class Check:
    """One bench run: what it fed the unit, how many outputs it compared bit for bit, the mismatches."""

    unit: str
    simulator: str
    suite: str
    vectors: int
    vector_kind: str
    results: int
    mismatches: int
    seconds: float
    built: bool


def _verilog(out):
    """Generate and lint every unit the demo simulates; returns [(module, path)]."""
    from fgmp.hw import ActivationQuantizer, Decoder, DotUnit, Engine, Tile
    from fgmp.hw.verilog import lint, write_verilog
    from fgmp.sim.decoders import DECODER_FORMATS, decoder_top
    from fgmp.sim.dot import dot_top
    from fgmp.sim.tile import tile_top

    units = [(decoder_top(name), Decoder(format=fmt), None) for name, fmt in DECODER_FORMATS.items()]
    dot = DotUnit(**DOT)
    units += [(dot_top(dot), dot, DOT), ("fgmp_actq", ActivationQuantizer(**QUANTIZER), QUANTIZER),
              (f"fgmp_engine_l{ENGINE_LANES}", Engine(**_engine()), _engine())]
    tile = Tile(**TILE[0])
    units.append((tile_top(tile), tile, TILE[0]))
    written = []
    for top, unit, params in units:
        path = write_verilog(unit, top, out / "verilog", params=params)
        lint(path, top)
        written.append((top, path))
    return written


def _engine():
    """The engine of the end-to-end run on the embedded model's default layer, so that both use one build."""
    from fgmp.e2e import engine_params
    from fgmp.golden.models.tiny_lm import TinyLMConfig

    return engine_params(ENGINE_LANES, TinyLMConfig().d_model)


def _timed(function):
    start = time.perf_counter()
    result = function()
    return result, time.perf_counter() - start


def _decoders(simulator, root):
    from fgmp.sim.decoders import run_decoder_bank_bench

    result, seconds = _timed(lambda: run_decoder_bank_bench(simulator, root))
    codes = sum(report["checked"] for report in result.reports)
    return [Check("decoders E2M1/E4M3/UE4M3", simulator, "every code", codes, "codes", codes,
                  sum(report["mismatches"] for report in result.reports), seconds, result.built)]


def _dot(simulator, root):
    from fgmp.sim.dot import run_dot_bench

    # Every element code pair costs seconds on Verilator and most of a minute on Icarus.
    suites = ("exhaustive", "random") if simulator == "verilator" else ("random",)
    result, seconds = _timed(lambda: run_dot_bench(DOT, simulator, root, suites=suites, count=100))
    checks = []
    for report in result.reports:
        exhaustive = report["suite"] == "exhaustive"
        checks.append(Check(f"dot unit L={DOT['lanes']} P={DOT['pipeline_stages']}", simulator,
                            "every element code pair" if exhaustive else "random reductions, stalls",
                            report["element_code_pairs"] if exhaustive else report["block_pairs"],
                            "code pairs" if exhaustive else "block pairs", report["checked"],
                            report["mismatches"], seconds / len(result.reports), result.built))
    return checks


def _quantizer(simulator, root):
    from fgmp.sim.actq import run_quantizer_bench

    result, seconds = _timed(lambda: run_quantizer_bench(QUANTIZER, simulator, root))
    report = result.report
    return [Check("activation unit", simulator, f"random BF16, {report['rounds']} configurations",
                  report["blocks"], "blocks", report["checked"], report["mismatches"], seconds, result.built)]


def _engine_bench(simulator, root):
    from fgmp.sim.actq import run_engine_bench

    result, seconds = _timed(lambda: run_engine_bench(_engine(), simulator, root))
    report = result.report
    return [Check(f"engine L={ENGINE_LANES}", simulator, f"random layer, {report['rounds']} configurations",
                  report["rounds"] * report["tokens"] * report["channels"] // 16, "blocks", report["checked"],
                  report["mismatches"], seconds, result.built)]


def _tile(simulator, root):
    from fgmp.sim.tile import run_tile_bench

    params, layers = TILE
    result, seconds = _timed(lambda: run_tile_bench(params, simulator, root, layers, idle=0.3, backpressure=0.3))
    report = result.report
    pairs = sum(r["ideal_cycles"] for r in report["runs"]) * params["lanes"]
    return [Check(f"tile L={params['lanes']}", simulator, f"{len(layers)} layers over AXI4-Lite, chained",
                  pairs, "block pairs", report["checked"], report["mismatches"], seconds, result.built)]


class _Progress:
    """One line per finished step, from whichever thread finished it."""

    def __init__(self):
        self._lock = threading.Lock()
        self._start = time.perf_counter()

    def __call__(self, text):
        with self._lock:
            print(f"  [{time.perf_counter() - self._start:5.0f} s] {text}", flush=True)

    @property
    def elapsed(self):
        return time.perf_counter() - self._start


def _step_done(progress, checks):
    for c in checks:
        progress(f"{c.simulator:<9} {c.unit}, {c.suite}: {c.results} results, {c.mismatches} mismatches"
                 f" ({'built' if c.built else 'reused'} model)")


def run_demo(out, simulators, *, jobs, e2e_args):
    """Run the demo into ``out`` (the end-to-end run with the parsed ``e2e_args``, none if None); returns
    (checks, e2e summary or None, lines of the e2e report, seconds)."""
    from fgmp.e2e import run_e2e
    from fgmp.jobs import step_pool, torch_threads_beside
    from fgmp.sim.runner import CACHE_ENV
    import torch

    out = Path(out).resolve()
    root = out / "sim"
    previous = os.environ.get(CACHE_ENV)
    os.environ.setdefault(CACHE_ENV, str(out / "models"))
    progress = _Progress()
    hardware, lines = [], []
    threads = torch.get_num_threads()
    try:
        with step_pool(jobs) as pool:
            torch.set_num_threads(torch_threads_beside(jobs))

            def submit_hardware():  # behind every step of the end-to-end run, which waits for its steps
                verilog = pool.defer(_verilog, out)
                verilog.add_done_callback(lambda f: f.cancelled() or f.exception() or progress(
                    f"generated and linted {len(f.result())} modules (verilator -Wall) in {out / 'verilog'}"))
                steps = [(_engine_bench, "verilator"), (_tile, "verilator"), (_dot, "verilator"), (_quantizer, "verilator"),
                         (_decoders, "verilator"), (_engine_bench, "icarus"), (_quantizer, "icarus"),
                         (_dot, "icarus"), (_decoders, "icarus")]
                for step, simulator in steps:
                    if simulator in simulators:
                        future = pool.defer(step, simulator, root)
                        future.add_done_callback(lambda f: f.cancelled() or f.exception() or _step_done(progress, f.result()))
                        hardware.append(future)
                hardware.append(verilog)
                progress(f"started {len(hardware)} hardware steps, {jobs} at a time; calibrating the model")

            try:
                summary = None
                if e2e_args is None:
                    submit_hardware()
                else:
                    summary = run_e2e(e2e_args, pool, say=lines.append, on_started=submit_hardware)
                    progress(f"end to end: {summary['bench']['checked'] - 1} outputs of {summary['layer']}, "
                             f"{summary['bench']['mismatches']} mismatches; perplexity"
                             f"{' and energy' * e2e_args.energy} done")
                checks = [check for future in hardware[:-1] for check in future.result()]
                hardware[-1].result()
            except BaseException:
                pool.shutdown(cancel_futures=True)
                raise
    finally:
        torch.set_num_threads(threads)
        if previous is None:
            os.environ.pop(CACHE_ENV, None)
    return checks, summary, lines, progress.elapsed


def _print_report(checks, summary, lines, seconds, out, simulators):
    print("\nUnits generated, linted and simulated against the golden model\n")
    print(f"{'unit':<26}{'simulator':<11}{'suite':<34}{'vectors':>9}{'results':>9}{'mismatches':>12}")
    order = {name: i for i, name in enumerate(("decoders", "dot", "activation", "engine", "tile"))}
    for c in sorted(checks, key=lambda c: (order[c.unit.split()[0]], c.simulator)):
        print(f"{c.unit:<26}{c.simulator:<11}{c.suite:<34}{c.vectors:>9}{c.results:>9}{c.mismatches:>12}")
    print("\nvectors: codes, element code pairs, block pairs or BF16 blocks fed to the unit; results: outputs "
          "compared bit for bit (FP32 lane results, decoded fields, codes with scale and precision bit)")
    values, bad = sum(c.results for c in checks), sum(c.mismatches for c in checks)
    if summary is None:
        print("\n" + "=" * 100)
        print(f"Summary ({seconds / 60:.1f} min, {', '.join(simulators)})")
        print(f"  checked   {values:,} outputs of {len(checks)} unit suites against the golden model: {bad} mismatches")
        print(f"  outputs   {out}")
        return bad
    print("\nEnd to end: the embedded LM quantized by the FGMP policy, one layer's real activations through the "
          "generated engine\n")
    for line in lines:
        print(line)

    bench, energy = summary["bench"], summary["energy"]
    rows = {row["policy"]: row for row in summary["perplexity"]}
    values, bad = values + bench["checked"], bad + bench["mismatches"]
    print("\n" + "=" * 100)
    print(f"Summary ({seconds / 60:.1f} min, {', '.join(simulators)})")
    print(f"  checked   {values:,} outputs of {len(checks)} unit suites and the end-to-end layer against the "
          f"golden model: {bad} mismatches")
    print(f"  layer     {summary['layer']}: {bench['tokens'] * bench['out_features']:,} FP32 outputs from real "
          f"activations, {bench['block_pairs']:,} block pairs in {bench['cycles']:,} cycles, {bench['mismatches']} "
          "mismatches")
    fgmp, fp8, nvfp4 = rows["fgmp"], rows["fp8"], rows["nvfp4"]
    print(f"  model     perplexity all-FP8 {fp8['perplexity']:.4f}, FGMP {fgmp['perplexity']:.4f} "
          f"({100 * (fgmp['perplexity'] / fp8['perplexity'] - 1):+.2f} %), all-NVFP4 {nvfp4['perplexity']:.4f} "
          f"({100 * (nvfp4['perplexity'] / fp8['perplexity'] - 1):+.2f} %)")
    print(f"  memory    {fgmp['bits_per_weight']:.3f} bits per weight vs {fp8['bits_per_weight']:.3f} all-FP8 "
          f"({summary['weight_memory_vs_fp8_percent']:+.1f} %; the paper: -30 %)")
    if energy:
        shared, split, _ = energy["rows"]
        print(f"  energy    FGMP dot unit vs FP8-only on this layer: shared datapath "
              f"{100 * (shared['vs_baseline'] - 1):+.1f} %, split {100 * (split['vs_baseline'] - 1):+.1f} % "
              f"({energy['lanes']}-lane units, datapath energy proxy; whole model with buffer reads: docs/results.md)")
    print(f"  outputs   {out}")
    return bad


def _run(args):
    from fgmp.cli import build_parser

    e2e_args = None
    if args.e2e:  # on Verilator when it is one of the simulators: Icarus takes minutes for the engine's layer
        simulator = "verilator" if "verilator" in args.simulators else "icarus"
        e2e_args = build_parser().parse_args([
            "e2e", "--quiet", "--simulator", simulator, "--out", str(Path(args.out) / "e2e"),
            *(["--tokens", "1"] if simulator == "icarus" else []), *([] if args.energy else ["--no-energy"])])
    print(f"FGMP demo: every unit generated, linted and checked bit for bit against the golden model on "
          f"{' and '.join(args.simulators)}" + (", then a layer of the embedded LM end to end" if args.e2e else "")
          + "\n", flush=True)
    checks, summary, lines, seconds = run_demo(args.out, args.simulators, jobs=args.jobs, e2e_args=e2e_args)
    bad = _print_report(checks, summary, lines, seconds, Path(args.out).resolve(), args.simulators)
    return 0 if bad == 0 else 1


def add_command(commands):
    from fgmp.e2e import reporting_errors
    from fgmp.jobs import default_jobs
    from fgmp.sim.runner import SIMULATORS

    demo = commands.add_parser("demo", help="generate, lint and simulate every unit, then a model layer end to "
                                            "end; print a report")
    demo.add_argument("--out", type=Path, default=Path("out/demo"))
    demo.add_argument("--simulators", nargs="+", choices=SIMULATORS, default=list(SIMULATORS))
    demo.add_argument("--no-energy", dest="energy", action="store_false",
                      help="leave out the energy proxy (its syntheses and toggle-counting builds take longest)")
    demo.add_argument("--no-e2e", dest="e2e", action="store_false",
                      help="only the units' checks, without the model layer end to end")
    demo.add_argument("--jobs", type=int, default=default_jobs(),
                      help=f"simulations and syntheses run side by side (default {default_jobs()})")
    demo.set_defaults(func=reporting_errors(_run))
