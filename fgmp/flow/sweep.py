"""Runs of the flow over several configurations: the comparison set, area sweeps and timing sweeps.

Each point runs in its own directory ``<out>/<unit slug>/<target or part>``, and with ``reuse`` a point
whose Verilog and scripts did not change is read back from there instead of being run again.
``jobs`` > 1 runs points in parallel processes (each Yosys / nextpnr run is single-threaded)."""

from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from .area import synthesize
from .timing import TimingResult, check_router, check_seed, place_and_route, target_frequency
from .tools import DoesNotFit
from .units import DOT_VARIANTS as VARIANTS, make_unit

__all__ = ["VARIANTS", "compare_configs", "area_sweep", "timing_sweep"]


def compare_configs(lanes, *, block_size=16, max_blocks=1024, pipeline_stages=1, max_channels=4096, actq=True):
    """(kind, params) of the comparison: each variant of the dot unit (VARIANTS: the shared and split FGMP
    datapaths, FP8-only, FP4-only) per lane count, and the activation
    unit that feeds them (its ``max_channels`` / ``block_size`` table rows match ``max_blocks``)."""
    configs = [("dot", {"lanes": count, "block_size": block_size, "max_blocks": max_blocks,
                        "pipeline_stages": pipeline_stages, **variant})
               for count in lanes for variant in VARIANTS.values()]
    if actq:
        configs.append(("actq", {"block_size": block_size, "max_channels": max_channels,
                                 "pipeline_stages": pipeline_stages}))
    return configs


def _validate(kind, params):
    """Build the unit to check its parameters before any tool runs; it is never elaborated, so silence
    Amaranth's warning about an unused elaboratable."""
    make_unit(kind, **params).component._MustUse__silence = True


def _area_point(kind, params, target, out, reuse):
    unit = make_unit(kind, **params)
    return synthesize(unit, target, Path(out) / unit.slug / target, reuse=reuse)


def _timing_point(kind, params, part, out, freq, reuse, router, seed):
    unit = make_unit(kind, **params)
    if freq is None:
        freq = target_frequency(kind, part)
    # Seed 1 and router1 add nothing to the directory, so the points run before either choice stay where they are.
    workdir = Path(out) / unit.slug / "-".join([part, *([router] if router != "router1" else []),
                                                 *([f"s{seed}"] if seed != 1 else [])])
    try:
        return place_and_route(unit, part, workdir, freq_mhz=freq, seed=seed, router=router, reuse=reuse)
    except DoesNotFit as error:
        return TimingResult.not_fitted(unit, part, error, router=router, seed=seed)


def _run(function, points, jobs, progress):
    if jobs <= 1:
        results = []
        for point in points:
            results.append(function(*point))
            progress(results[-1])
        return results
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(function, *point) for point in points]
        results = []
        for future in futures:
            results.append(future.result())
            progress(results[-1])
        return results


def area_sweep(configs, targets, out, *, reuse=False, jobs=1, progress=lambda result: None):
    """AreaResults of every (config, target), configs as (kind, params) pairs; validated up front."""
    for kind, params in configs:
        _validate(kind, params)
    points = [(kind, params, target, out, reuse) for kind, params in configs for target in targets]
    return _run(_area_point, points, jobs, progress)


def timing_sweep(configs, parts, out, *, freq=None, reuse=False, jobs=1, router="router1", seeds=(1,),
                 progress=lambda result: None):
    """TimingResults of every (config, part); a point that does not fit has no Fmax and says why.
    ``freq`` None constrains each point at its unit's target on the part (``TARGET_MHZ``), or at the
    constraint file's clock where the unit has none. ``router``: nextpnr's (``timing.ROUTERS``); ``seeds``:
    nextpnr's placement seeds, each point placed once per seed."""
    for kind, params in configs:
        _validate(kind, params)
    check_router(router)  # before any point runs
    for seed in seeds:
        check_seed(seed)
    if not seeds:
        raise ValueError("Seeds must name at least one seed")
    if len(set(seeds)) != len(seeds):  # the same seed twice would run one point twice, into one directory
        raise ValueError(f"Seeds must differ, not {list(seeds)}")
    points = [(kind, params, part, out, freq, reuse, router, seed)
              for kind, params in configs for part in parts for seed in seeds]
    return _run(_timing_point, points, jobs, progress)
