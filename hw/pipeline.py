"""What the streaming units share: parameter checks and the global-stall pipeline discipline."""

from amaranth import ResetSignal, Signal

__all__ = ["check_count", "check_pipeline_stages", "StallPipeline"]


def check_count(name, value, minimum):
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, not {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, not {value}")


def check_pipeline_stages(value, maximum):
    """Each unit places its own cuts, so each has its own deepest pipeline."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"Pipeline stages must be an integer, not {value!r}")
    if not 0 <= value <= maximum:
        raise ValueError(f"Pipeline stages must be between 0 and {maximum}, not {value}")


class StallPipeline:
    """One enable for every register of a unit: it advances unless a finished result waits for the sink
    (``o.valid & ~o.ready``), which also drives ``i.ready``. Not ready during reset: a block offered then
    would look taken but be lost."""

    def __init__(self, m, i, o):
        self._m = m
        self.enable = ~(o.valid & ~o.ready)
        m.d.comb += i.ready.eq(self.enable & ~ResetSignal())

    def cut(self, valid, signals, register):
        """Optionally register a stage's outputs (and their valid bit) on ``enable``; returns the
        (valid, signals) the next stage reads."""
        if not register:
            return valid, signals
        m = self._m
        named = []
        for k, value in enumerate(signals):
            if not isinstance(value, Signal):  # slices and expressions need a name to register
                wire = Signal.like(value, name=f"stage_wire{k}")
                m.d.comb += wire.eq(value)
                value = wire
            named.append(value)
        registered_valid = Signal(name=f"{named[0].name}_v")
        registered = [Signal.like(s, name=f"{s.name}_q") for s in named]
        with m.If(self.enable):
            m.d.sync += registered_valid.eq(valid)
            m.d.sync += [r.eq(s) for r, s in zip(registered, named)]
        return registered_valid, registered

    def stage(self, valid, values, register):
        """``cut`` for a nested structure of dicts, lists and tuples of values; returns the same structure,
        registered or not, so a stage's code can name what it hands on."""
        leaves = []

        def collect(node):
            if isinstance(node, dict):
                for value in node.values():
                    collect(value)
            elif isinstance(node, (list, tuple)):
                for value in node:
                    collect(value)
            else:
                leaves.append(node)

        collect(values)
        valid, registered = self.cut(valid, leaves, register)
        taken = iter(registered)

        def rebuild(node):
            if isinstance(node, dict):
                return {key: rebuild(value) for key, value in node.items()}
            if isinstance(node, (list, tuple)):
                return type(node)(rebuild(value) for value in node)
            return next(taken)

        return valid, rebuild(values)
