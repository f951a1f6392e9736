"""The narrow activation quantization unit (docs/numerics.md §9): the same rule and ports as
``ActivationQuantizer``, fed E = ``elements_per_cycle`` BF16 values per cycle instead of a whole block, with
its per-element logic built E times instead of B times.

A block arrives as N = B / E beats and passes five stages of N cycles each, blocks back to back at one beat
per cycle. Storage is one block's worth where a stage reads in the order it was written:

1. gather: each beat's E elements go to slot b of an N-slot register file (beat b) while the running
   amax' (compared on the unscaled exponents: k is the same for the whole block) and the NaN/Inf flags
   are kept. The beat that completes the block loads the block's scalars (amax', flags, k, T,
   first/last) and reads its sensitivity row from the table (synchronous read, on that same edge).
2. scale: s4 and s8 from the held amax', once per block (combinational, held for the block's N cycles).
   The slots are read in order, one per cycle, each beat registered with the scales and its E
   sensitivity codes. The next block's beat b is taken no earlier than the edge that reads slot b.
3. element: E elements per cycle: both quotients and codes, |D|, Δ̂, Δ̂², F·Δ̂² (``hw/actq.py``'s
   per-element helpers) and the running maximum leading position E of the terms. The terms enter an
   N-beat delay line; the codes are collected for the decision (two blocks' worth: the decision comes
   N cycles after the block's last element beat).
4. window sum: the delay line hands beat b's terms out exactly N enabled cycles after the element stage
   made them, once the block's top is known; E terms per cycle are windowed below it and summed.
5. decision: on the block's last sum beat, score > T (and the forced FP8 of non-finite input) chooses
   the codes and scale, registered into ``o``.

Every register advances on one enable, low only while a result waits for the sink (the activation unit's
global stall): each stage's N beats take N enabled cycles, so no stage is handed a block before it has
passed the previous one on, and no handshake is needed between stages.
"""

from amaranth import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from .actq import (_SCALE_6, _SCALE_448, _UE4M3_448, _larger, _larger_magnitude, _tree, align_score,
                   check_parameters, configuration_layout, decode_scale, element_codes, normalized_scale, perturbation,
                   score_above, score_term, score_width, term_leading, truncate_delta, unpack_bf16, windowed_term)
from .arith import normalize, round_ratio, square
from .dot import block_layout
from .formats import E2M1, E4M3, UE4M3
from .pipeline import StallPipeline, check_count

__all__ = ["NarrowActivationQuantizer"]

_TERM_MANTISSA_BITS = 28
_TERM_EXPONENT_BITS = 7  # range(2 * 25 + 16)
_LEADING_RANGE = range(2 * 25 + 16 + 28)


class NarrowActivationQuantizer(wiring.Component):
    """Quantizes BF16 activations to NVFP4 or FP8 blocks exactly as ``ActivationQuantizer`` does
    (numerics §9), taking ``elements_per_cycle`` (E) elements per cycle: one block every B / E cycles.

    Parameters (keyword-only): ``block_size`` B >= 1 (default 16); ``max_channels``, the longest
    reduction in elements (the sensitivity table depth, a multiple of B; default 4096);
    ``elements_per_cycle`` E, 1..B, a divisor of B (default 1).

    Ports:
    - ``i``: In stream of ``{values: BF16[E], first, last}``. A block arrives as B / E consecutive
      transfers (beats): beat b carries elements b·E .. b·E + E - 1. ``first``/``last`` are block-level
      flags with ``ActivationQuantizer``'s meaning (a block with ``first``, or the first block after one
      with ``last``, starts a reduction; the block's position in it indexes the sensitivity table), and
      are **taken from the block's first beat** only (ignored on its other beats).
    - ``o``: Out stream of ``{block, first, last}``, one transfer per block, as ``ActivationQuantizer``.
    - ``config``, ``fp8_blocks``, ``nvfp4_blocks``, ``table_overflow``: as ``ActivationQuantizer``. The
      registers k and T apply to the blocks whose first beat is taken after the cycle they are written
      in; a block's table row is read on the edge that takes its last beat (a row written on that same
      edge is seen by later blocks).

    Throughput: one beat per cycle while ``o`` is ready (``beats_per_block`` cycles per block). A stall
    of ``o`` holds the whole unit, as in ``ActivationQuantizer``.
    """

    def __init__(self, *, block_size=16, max_channels=4096, elements_per_cycle=1):
        check_parameters(block_size=block_size, max_channels=max_channels, pipeline_stages=0)
        check_count("Elements per cycle", elements_per_cycle, 1)
        if block_size % elements_per_cycle:
            raise ValueError(f"Elements per cycle ({elements_per_cycle}) must divide the block size ({block_size})")
        self._block_size = block_size
        self._max_channels = max_channels
        self._elements = elements_per_cycle
        self._rows = max_channels // block_size
        self._table_depth = max(self._rows, 2)  # as ActivationQuantizer: no zero-width row address
        in_layout = data.StructLayout({"values": data.ArrayLayout(16, elements_per_cycle), "first": 1, "last": 1})
        out_layout = data.StructLayout({"block": block_layout(("nvfp4", "fp8"), block_size), "first": 1, "last": 1})
        config_layout = configuration_layout(self._table_depth, block_size)
        super().__init__({
            "i": In(stream.Signature(in_layout)),
            "o": Out(stream.Signature(out_layout)),
            "config": In(config_layout),
            "fp8_blocks": Out(32),
            "nvfp4_blocks": Out(32),
            "table_overflow": Out(1),
        })

    @property
    def block_size(self):
        return self._block_size

    @property
    def max_channels(self):
        return self._max_channels

    @property
    def elements_per_cycle(self):
        return self._elements

    @property
    def beats_per_block(self):
        """B / E: the input transfers of one block, and the cycles between blocks at full rate."""
        return self._block_size // self._elements

    @property
    def latency(self):
        """Cycles from the edge that takes a block's last beat to the earliest edge that can transfer its
        result: 2·(B / E) + 2 (the block register, the element and window-sum stages of B / E cycles each,
        the output register). From the block's first beat: 3·(B / E) + 1."""
        return 2 * self.beats_per_block + 2

    def elaborate(self, platform):
        m = Module()
        B, E, N = self._block_size, self._elements, self.beats_per_block

        def counter(name):
            """A beat index 0..N-1; the constant 0 when a block is one beat (no zero-width registers)."""
            return Signal(range(N), name=name) if N > 1 else Const(0, 1)

        def count(index):
            """The statements that advance ``counter`` ``index``, wrapping after N - 1."""
            return [index.eq(Mux(index == N - 1, 0, index + 1))] if N > 1 else []

        def restart(index):
            return [index.eq(0)] if N > 1 else []

        pipeline = StallPipeline(m, self.i, self.o)
        enable = pipeline.enable
        take = Signal()
        m.d.comb += take.eq(self.i.valid & self.i.ready)

        # Configuration registers and the sensitivity table (one row of B codes per block position).
        scale_exponent = Signal(signed(8))
        threshold = Signal(32)
        with m.If(self.config.set_registers):
            m.d.sync += [scale_exponent.eq(self.config.scale_exponent), threshold.eq(self.config.threshold)]
        m.submodules.table = table = memory.Memory(shape=data.ArrayLayout(8, B), depth=self._table_depth, init=[])
        write = table.write_port()
        m.d.comb += [write.addr.eq(self.config.table_row), write.data.eq(self.config.table_data),
                     write.en.eq(self.config.table_write)]
        read = table.read_port(domain="sync", transparent_for=())

        # ---- 1. gather ----
        beat = counter("beat")  # the index of the next beat taken in its block
        first_beat = Signal()
        last_beat = Signal()
        m.d.comb += [first_beat.eq(beat == 0), last_beat.eq(beat == N - 1)]
        with m.If(take):
            m.d.sync += count(beat)

        # The block's position in its reduction (ActivationQuantizer's rule), on its first beat.
        in_reduction = Signal()
        position = Signal(range(self._rows + 2))  # saturates at rows + 1
        start = Signal()
        m.d.comb += start.eq(self.i.payload.first | ~in_reduction)
        row = Signal(range(self._table_depth))
        m.d.comb += row.eq(Mux(start, 0, Mux(position >= self._rows, self._rows - 1, position)))
        with m.If(take & first_beat):
            m.d.sync += [in_reduction.eq(~self.i.payload.last),
                         position.eq(Mux(start, 1, Mux(position > self._rows, position, position + 1)))]
            with m.If(~start & (position >= self._rows)):
                m.d.sync += self.table_overflow.eq(1)

        # What a block takes from its first beat: the markers, its table row, k and T.
        block_info = {"first": self.i.payload.first, "last": self.i.payload.last, "row": row,
                      "k": scale_exponent, "threshold": threshold}
        info = {}
        for key, value in block_info.items():
            kept = Signal.like(value, name=f"kept_{key}")
            info[key] = Signal.like(value, name=f"block_{key}")
            m.d.comb += info[key].eq(Mux(first_beat, value, kept))
            with m.If(take):
                m.d.sync += kept.eq(info[key])

        # The beat's elements, compared on (significand, unscaled exponent); NaN/Inf flags.
        unpacked = [unpack_bf16(m, self.i.payload.values[e], 0, f"g{e}") for e in range(E)]
        pick = lambda a, b, name: _larger_magnitude(m, a, b, name)  # noqa: E731
        beat_amax = _tree([(u["fsig"], u["exp"]) for u in unpacked], pick, "gamax")
        running_amax = (Signal(8, name="amax_run_sig"), Signal(signed(11), name="amax_run_exp"))
        merged = _larger_magnitude(m, running_amax, beat_amax, "amax_merge")
        amax = (Signal(8, name="block_amax_sig"), Signal(signed(11), name="block_amax_exp"))
        beat_inf = Cat(u["inf"] for u in unpacked).any()
        beat_forced = Cat(u["nan"] | u["inf"] for u in unpacked).any()
        running_inf, running_forced = Signal(name="inf_run"), Signal(name="forced_run")
        has_inf, forced = Signal(name="block_has_inf"), Signal(name="block_forced")
        m.d.comb += [amax[0].eq(Mux(first_beat, beat_amax[0], merged[0])),
                     amax[1].eq(Mux(first_beat, beat_amax[1], merged[1])),
                     has_inf.eq(beat_inf | (~first_beat & running_inf)),
                     forced.eq(beat_forced | (~first_beat & running_forced))]
        with m.If(take):
            m.d.sync += [running_amax[0].eq(amax[0]), running_amax[1].eq(amax[1]), running_inf.eq(has_inf),
                         running_forced.eq(forced)]

        # The block's elements: slot b holds beat b. The scale stage reads a block's slots in order in the N
        # enabled cycles after its last beat, and the next block's beat b can be taken no earlier than the
        # edge that reads slot b (which then sees the old value): one block of storage suffices.
        chunk = data.ArrayLayout(16, E)
        slots = [Signal(chunk, name=f"slot{b}") for b in range(N)]
        for b in range(N):
            with m.If(take & (beat == b)):
                m.d.sync += slots[b].eq(self.i.payload.values)

        # The block's scalars, loaded by its last beat, held while its slots are read out.
        held = {key: Signal(shape, name=f"h_{key}") for key, shape in (
            ("amax_sig", 8), ("amax_exp", signed(11)), ("has_inf", 1), ("forced", 1), ("first", 1), ("last", 1),
            ("k", signed(8)), ("threshold", 32))}
        active = Signal(name="h_active")
        index = counter("h_index")
        m.d.comb += [read.addr.eq(info["row"]), read.en.eq(take & last_beat)]
        with m.If(enable & active):
            m.d.sync += count(index)
            with m.If(index == N - 1):
                m.d.sync += active.eq(0)
        with m.If(take & last_beat):
            m.d.sync += [held["amax_sig"].eq(amax[0]), held["amax_exp"].eq(amax[1]), held["has_inf"].eq(has_inf),
                         held["forced"].eq(forced), active.eq(1)]
            m.d.sync += restart(index)
            m.d.sync += [held[key].eq(info[key]) for key in ("first", "last", "k", "threshold")]

        # ---- 2. scale: s4 = RNE(amax' / 6), s8 = RNE(amax' / 448) (448 with an Inf) ----
        amax_exp = Signal(signed(11), name="amax_exp_scaled")
        m.d.comb += amax_exp.eq(held["amax_exp"] - held["k"])
        amax_sig, amax_exp = normalize(m, held["amax_sig"], amax_exp, "amax")
        s4 = round_ratio(m, amax_sig, amax_exp, Const(_SCALE_6[0], 4), Const(_SCALE_6[1], signed(4)), UE4M3, "s4")
        s8 = round_ratio(m, amax_sig, amax_exp, Const(_SCALE_448[0], 4), Const(_SCALE_448[1], signed(4)), UE4M3,
                         "s8")
        s8_used = Signal(8, name="s8_used")
        m.d.comb += s8_used.eq(Mux(held["has_inf"], _UE4M3_448, s8))

        # The beat register: E elements, their sensitivity codes, the block's scales and what it carries.
        x = {"values": Signal(chunk, name="x_values"), "f": Signal(8 * E, name="x_f"), "s4": Signal(8, name="x_s4"),
             "s8": Signal(8, name="x_s8"), "k": Signal(signed(8), name="x_k"), "threshold": Signal(32, name="x_t"),
             "first": Signal(name="x_first"), "last": Signal(name="x_last"), "forced": Signal(name="x_forced"),
             "index": counter("x_index")}
        x_valid = Signal(name="x_valid")
        with m.If(enable):
            m.d.sync += [x_valid.eq(active),
                         x["values"].eq(Cat(*slots).word_select(index, 16 * E) if N > 1 else slots[0]),
                         x["f"].eq(read.data.as_value().word_select(index, 8 * E) if N > 1 else read.data),
                         x["s4"].eq(s4),
                         x["s8"].eq(s8_used)]
            if N > 1:
                m.d.sync += x["index"].eq(index)
            m.d.sync += [x[key].eq(held[key]) for key in ("k", "threshold", "first", "last", "forced")]

        # ---- 3. element: E elements per cycle, codes and score terms ----
        s4_sig, s4_exp = normalized_scale(m, decode_scale(m, x["s4"], "s4_dec"), "s4_dec")
        s8_sig, s8_exp = normalized_scale(m, decode_scale(m, x["s8"], "s8_dec"), "s8_dec")
        s4_decoded = decode_scale(m, x["s4"], "s4_dec_value")
        s8_decoded = decode_scale(m, x["s8"], "s8_dec_value")
        code_layout = data.ArrayLayout(data.StructLayout({"q4": 4, "q8": 8}), E)
        term_layout = data.ArrayLayout(data.StructLayout({"tm": _TERM_MANTISSA_BITS, "te": _TERM_EXPONENT_BITS}), E)
        beat_codes = Signal(code_layout, name="beat_codes")
        beat_terms = Signal(term_layout, name="beat_terms")
        leading = []
        for e in range(E):
            element = unpack_bf16(m, x["values"][e], x["k"], f"x{e}")
            sig, exp = normalize(m, element["fsig"], element["exp"], f"x{e}_n")
            q4_mag = round_ratio(m, sig, exp, s4_sig, s4_exp, E2M1, f"q4_{e}")
            q8_mag = round_ratio(m, sig, exp, s8_sig, s8_exp, E4M3, f"q8_{e}")
            q4, q8 = element_codes(m, q4_mag, q8_mag, element, s4_decoded.zero, s8_decoded.zero, e)
            mantissa, shift = truncate_delta(m, perturbation(m, s4_decoded, s8_decoded, q4, q8, e), e)
            tm, te = score_term(m, x["f"][8 * e:8 * e + 8], square(m, mantissa, f"dm{e}"), shift,
                                s8_decoded.exponent, e)
            leading.append(term_leading(m, tm, te, e))
            m.d.comb += [beat_codes[e].q4.eq(q4), beat_codes[e].q8.eq(q8), beat_terms[e].tm.eq(tm),
                         beat_terms[e].te.eq(te)]
        beat_top = _tree(leading, lambda a, b, name: _larger(m, a, b, name), "beat_top")
        running_top = Signal(_LEADING_RANGE, name="top_run")
        top = Signal(_LEADING_RANGE, name="block_top")
        m.d.comb += top.eq(Mux(x["index"] == 0, beat_top, _larger(m, running_top, beat_top, "top_merge")))
        collected = [Signal(code_layout, name=f"collect{b}") for b in range(N - 1)]
        x_last_beat = x_valid & (x["index"] == N - 1)
        with m.If(enable & x_valid):
            m.d.sync += running_top.eq(top)
            if collected:
                m.d.sync += [collected[b].eq(collected[b + 1]) for b in range(N - 2)]
                m.d.sync += collected[-1].eq(beat_codes)

        # The terms wait N enabled cycles in a delay line: a block's beats pass the element stage in N
        # consecutive enabled cycles, and its window sum reads them in the N after (once the block's top is
        # known), so beat b's terms are at the line's end exactly when the sum needs them; no block buffer.
        delay = [Signal(term_layout, name=f"h2_terms{k}") for k in range(N)]
        with m.If(enable):
            m.d.sync += [delay[0].eq(beat_terms)] + [delay[k].eq(delay[k - 1]) for k in range(1, N)]

        # The codes, held whole until the decision; the block's scalars for its sum and decision.
        codes = [Signal(code_layout, name=f"h2_codes{b}") for b in range(N)]
        summing = {key: Signal(shape, name=f"h2_{key}") for key, shape in (
            ("top", _LEADING_RANGE), ("s4", 8), ("s8", 8), ("threshold", 32), ("first", 1), ("last", 1),
            ("forced", 1))}
        sum_active = Signal(name="h2_active")
        sum_index = counter("h2_index")
        with m.If(enable & sum_active):
            m.d.sync += count(sum_index)
            with m.If(sum_index == N - 1):
                m.d.sync += sum_active.eq(0)
        with m.If(enable & x_last_beat):
            m.d.sync += [codes[b].eq(buffered) for b, buffered in enumerate(collected + [beat_codes])]
            m.d.sync += [summing["top"].eq(top), sum_active.eq(1)]
            m.d.sync += restart(sum_index)
            m.d.sync += [summing[key].eq(x[key]) for key in ("s4", "s8", "threshold", "first", "last", "forced")]

        # ---- 4. window sum: E terms per cycle below the block's top, accumulated ----
        units = [windowed_term(m, delay[-1][e].tm, delay[-1][e].te, summing["top"], e) for e in range(E)]
        accumulated = Signal(score_width(B), name="score_run")
        total = Signal(score_width(B), name="score_units")
        m.d.comb += total.eq(Mux(sum_index == 0, 0, accumulated) + sum(units))
        with m.If(enable & sum_active):
            m.d.sync += accumulated.eq(total)

        # ---- 5. decision ----
        greater = score_above(m, align_score(m, total, summing["top"], summing["threshold"]))
        fp8 = Signal(name="choose_fp8")
        m.d.comb += fp8.eq(summing["forced"] | greater)
        done = Signal(name="block_done")
        m.d.comb += done.eq(sum_active & (sum_index == N - 1))
        with m.If(enable):
            m.d.sync += self.o.valid.eq(done)
            with m.If(done):
                m.d.sync += [self.o.payload.first.eq(summing["first"]), self.o.payload.last.eq(summing["last"]),
                             self.o.payload.block.fp8.eq(fp8),
                             self.o.payload.block.scale.eq(Mux(fp8, summing["s8"], summing["s4"]))]
                for b in range(N):
                    for e in range(E):
                        m.d.sync += self.o.payload.block.codes[b * E + e].eq(
                            Mux(fp8, codes[b][e].q8, codes[b][e].q4))
        with m.If(self.o.valid & self.o.ready):
            with m.If(self.o.payload.block.fp8):
                m.d.sync += self.fp8_blocks.eq(self.fp8_blocks + (self.fp8_blocks != 0xFFFFFFFF))
            with m.Else():
                m.d.sync += self.nvfp4_blocks.eq(self.nvfp4_blocks + (self.nvfp4_blocks != 0xFFFFFFFF))
        with m.If(self.config.clear_counters):
            m.d.sync += [self.fp8_blocks.eq(0), self.nvfp4_blocks.eq(0), self.table_overflow.eq(0)]
        return m
