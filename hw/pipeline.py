"""What the streaming units share: parameter checks and the pipeline disciplines (global stall, credits)."""

from amaranth import Const, ResetSignal, Signal
from amaranth.lib.fifo import SyncFIFO

__all__ = ["FLOW_CONTROLS", "check_count", "check_flow_control", "check_pipeline_stages", "copies", "StallPipeline"]


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


def copies(m, value, count, name):
    """``count`` named copies of ``value`` for consumers far apart on a die. Where a cut registers them,
    each is its own register, which placement can put next to its consumer: ``cut`` marks those registers
    ``keep``, since synthesis merges registers with equal inputs (Yosys reads the mark on cells, not
    wires: the flow moves it to the flip-flop that drives a marked wire). Without a cut they are plain
    wires: a ``keep`` there would only stop logic from merging across them."""
    check_count("Copies", count, 1)
    wires = [Signal.like(value, name=f"{name}_copy{k}", attrs={"fgmp_copy": 1}) for k in range(count)]
    m.d.comb += [wire.eq(value) for wire in wires]
    return wires


# stall: one clock enable for every register, low while a result waits for the sink. credit: the registers
# run free and results queue in a FIFO of latency + 1 entries (docs/hardware.md, clock rate).
FLOW_CONTROLS = ("stall", "credit")


def check_flow_control(flow_control):
    if not isinstance(flow_control, str):
        raise TypeError(f"Flow control must be one of {', '.join(map(repr, FLOW_CONTROLS))}, not {flow_control!r}")
    if flow_control not in FLOW_CONTROLS:
        raise ValueError(f"Unknown flow control {flow_control!r}; choose from {', '.join(map(repr, FLOW_CONTROLS))}")


class StallPipeline:
    """How a unit's registers advance and its results reach ``o``.

    Global stall (``credits`` 0): one enable for every register of the unit; it advances unless a
    finished result waits for the sink (``o.valid & ~o.ready``), which also drives ``i.ready``.

    Credits (``credits`` > 0): the registers advance every cycle (the enable is the constant 1, so no
    clock enable fans out to them) and results go to a FIFO of ``credits`` entries that ``o`` reads.
    An input taken while ``reserves`` is true (one that will produce a result) takes a credit; a result
    leaving ``o`` gives it back; ``i.ready`` is "a credit is left", a register compare, so no path runs
    from ``o.ready`` to ``i.ready``. A result is written to the FIFO on the edge that would have
    registered it into ``o``, and the FIFO shows it from that edge: the latency is the same.

    Either way, not ready during reset: a block offered then would look taken but be lost."""

    def __init__(self, m, i, o, *, credits=0, reserves=None):
        self._m = m
        self._o = o
        if not credits:
            self.enable = ~(o.valid & ~o.ready)
            m.d.comb += i.ready.eq(self.enable & ~ResetSignal())
            self.input_valid = i.valid
            self._results = None
            return
        self.enable = Const(1)
        m.submodules.results = self._results = results = SyncFIFO(width=len(o.payload.as_value()), depth=credits)
        left = Signal(range(credits + 1), init=credits, name="credits")
        m.d.comb += i.ready.eq((left != 0) & ~ResetSignal())
        self.input_valid = i.valid & i.ready
        taken = Signal(name="credit_taken")
        given = Signal(name="credit_given")
        m.d.comb += [taken.eq(self.input_valid & reserves), given.eq(o.valid & o.ready),
                     o.valid.eq(results.r_rdy), o.payload.eq(results.r_data), results.r_en.eq(o.ready)]
        m.d.sync += left.eq(left - taken + given)

    def emit(self, valid, payload):
        """The unit's result (``valid``, a value of ``o``'s payload shape): registered into ``o`` (global
        stall) or written to the result FIFO (credits)."""
        m = self._m
        if self._results is None:
            with m.If(self.enable):
                m.d.sync += [self._o.valid.eq(valid), self._o.payload.eq(payload)]
        else:
            m.d.comb += [self._results.w_en.eq(valid), self._results.w_data.eq(payload)]

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
        # A copy's register, and each register after it, stays its own (``copies``).
        registered = [Signal.like(s, name=f"{s.name}_q", attrs={"keep": 1} if s.attrs.get("fgmp_copy") else s.attrs)
                      for s in named]
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
