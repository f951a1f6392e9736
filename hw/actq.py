"""The mixed-precision activation quantization unit (docs/numerics.md §9): BF16 blocks in, NVFP4 or FP8
blocks out, one block per cycle, decided by a Fisher-weighted score against a threshold."""

from amaranth import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from .arith import (RATIO_QUOTIENT_BITS, divide_steps, leading_one, normalize, quotient_code, quotient_exponent,
                    quotient_round, ratio_base, ratio_dividend, small_product, square_partials)
from .decoder import Decoder
from .dot import block_layout
from .formats import E2M1, E4M3, UE4M3
from .pipeline import StallPipeline, check_count, check_flow_control, check_pipeline_stages, copies

__all__ = ["CUTS", "MAX_PIPELINE_STAGES", "ActivationQuantizer", "check_parameters"]

# The register cuts in the order the pipeline depth P places them: P cuts are CUTS[:P]. The first three
# are the original ones; each later one splits the stage that was then estimated to be the longest (the
# measured critical paths are in docs/hardware.md). Each name says what is registered, in dataflow order:
#   unpack           the BF16 elements, their magnitude keys and the block's NaN/Inf flags, before the amax tree
#   amax_mid         the amax tree after its first half of compare levels (2 of 4 at B = 16)
#   amax_l1/l3       the amax tree after the first half of its first / second half of levels
#   amax_key         the largest magnitude key, before it is unpacked with k
#   amax             amax' found, before its normalisation and the scale roundings
#   amax_normalized  amax' normalised, before the scale divisions
#   scale_div3/6     the scale divisions (amax' / 6 and / 448) after 3 and 6 of their 9 quotient bits; from
#                    the first chunk on, each carries its rounding's exponent work (arith.quotient_exponent)
#   scale_quotients  the scale quotients and remainders, before their rounding
#   scale_rounding   the scale quotients shifted and rounded, before their codes and saturation; beside
#                    them the elements unpacked with k (significand, exponent - k, NaN/Inf), before their
#                    normalisation
#   scales           s4 and s8 (P >= 1)
#   divisors         s4 and s8 decoded and normalised, before the element divisions they divide
#   divisor_copies   the divisors and s8's exponent registered once per element (``copies``), before the
#                    divisions: the single register of each drove sixteen elements' logic across the die;
#                    here it drives only wires to the copies, which placement can put beside their element.
#                    Each element then carries its own copies (s8's exponent as far as its score term)
#   div1..div8       the element divisions (x' / s4 and x' / s8) after 1..8 quotient bits (each a cut of its
#                    own from P = 39: one compare-and-subtract step per stage, as the divisors reach the
#                    sixteen elements' steps over one long net each)
#   quotients        the element quotients and remainders, before their rounding
#   rounding         the element quotients shifted and rounded, before their codes and saturation
#   codes            q4 and q8, before the products s*q
#   magnitude_products  the significand products of s4*q4 and s8*q8 and their shift amounts, before the shifts
#   magnitudes       |s4*q4| and |s8*q8|, before their distance
#   perturbations    |D| (P >= 2)
#   delta_hat        Δ̂, |D| truncated to 12 bits, before its square
#   square_mid       Δ̂²'s partial products in four sums (arith.square_partials), before their total
#   square           Δ̂², before the product with F
#   terms            F * Δ̂² (P >= 3)
#   leading          each term's leading position, before their maximum
#   top_mid          the maximum's tree after its first half of levels
#   top              the largest term's position E, before the window and sum
#   top_copies       E registered once per element and once for T's frame, before the window; from here
#                    on each term also has a register of its own for its leading one and one for its
#                    window, so neither consumer pulls the other's register across the die
#   window           the terms shifted into the window below E, before their sum
#   sum_mid          the windowed sum after the first half of its adder tree's levels
#   sum              the windowed sum, before the threshold compare
#   align            the windowed sum and T's bound in its frame (floor(T * 2**(85 - E))), before the compare
#   decision         the block's choice of FP8, before it selects the output codes and scale
CUTS = ("scales", "perturbations", "terms", "quotients", "top", "scale_div3", "sum", "delta_hat", "codes",
        "div3", "amax", "scale_quotients", "square", "div6", "scale_div6", "unpack", "amax_mid", "align",
        "rounding", "scale_rounding", "window", "divisors", "sum_mid", "amax_normalized", "magnitudes", "leading",
        "top_mid", "decision", "magnitude_products", "div2", "div5", "div8", "square_mid", "amax_l1", "amax_l3",
        "amax_key", "div1", "div4", "div7", "divisor_copies", "top_copies")
# The deepest pipeline this unit places cuts for.
MAX_PIPELINE_STAGES = len(CUTS)
_BF16_BIAS_AND_MANTISSA = 127 + 7
_DELTA_BITS = 12
_SQUARE_PARTS = 4  # Δ̂²'s 78 partial products in four sums before ``square_mid``
_WINDOW_BITS = 40
_SCORE_LSB = -45  # a windowed sum's unit is 2**(E - 40 - 45)
_FP32_BIAS_AND_MANTISSA = 127 + 23
_SCALE_448 = (14, 5)  # 448 = 14 * 2**5, as a normalised (4-bit significand, exponent) pair
_SCALE_6 = (12, -1)  # 6 = 12 * 2**-1
_UE4M3_448 = 0x7E
_E4M3_NAN = 0x7F


def configuration_layout(table_depth, block_size):
    """The ``config`` port of the activation units (this one and the narrow one): table row writes and the
    registers, so that an integrator drives either the same way."""
    return data.StructLayout({
        "table_write": 1, "table_row": range(table_depth), "table_data": data.ArrayLayout(8, block_size),
        "set_registers": 1, "scale_exponent": signed(8), "threshold": 32, "clear_counters": 1,
    })


def check_parameters(*, block_size, max_channels, pipeline_stages, flow_control="stall"):
    """The generator parameters' checks, shared with the engine; raises TypeError/ValueError."""
    check_count("Block size", block_size, 1)
    check_count("Maximum channels", max_channels, 1)
    if max_channels % block_size:
        raise ValueError(f"Maximum channels ({max_channels}) must be a multiple of the block size ({block_size})")
    check_pipeline_stages(pipeline_stages, MAX_PIPELINE_STAGES)
    check_flow_control(flow_control)


class ActivationQuantizer(wiring.Component):
    """Quantizes each block of ``block_size`` BF16 activations to the NVFP4 or FP8 block the dot unit
    consumes (numerics §9), one block per cycle.

    Parameters (keyword-only): ``block_size`` >= 1 (default 16); ``max_channels``, the longest reduction
    in elements (sets the sensitivity table depth, a multiple of ``block_size``; default 4096);
    ``pipeline_stages`` 0..MAX_PIPELINE_STAGES (register cuts, placed in the order of ``CUTS``; with any
    cut the sensitivity table's read is synchronous); ``flow_control``, 'stall' (default: one clock enable
    holds every register while a result waits for the sink) or 'credit' (the registers run free and results
    queue in a FIFO of ``result_entries`` = latency + 1 entries, so no enable fans out to the datapath and
    ``i.ready`` does not depend on ``o.ready`` in the same cycle; same latency, II = 1).

    Ports:
    - ``i``: In stream of ``{values: BF16[B], first, last}``; ``first``/``last`` mark a reduction as for
      the dot unit, and the block's position in it indexes the sensitivity table.
    - ``o``: Out stream of ``{block, first, last}``, ``block`` in the dot unit's FGMP block layout.
    - ``config``: In ``{table_write, table_row, table_data: UE4M3[B], set_registers, scale_exponent
      (signed 8), threshold (FP32 bits), clear_counters}``: table rows (one per block position) and the
      registers are written on the cycles their strobe is high.
    - ``fp8_blocks``, ``nvfp4_blocks``: Out, 32-bit counts of emitted blocks (saturating).
    - ``table_overflow``: Out, sticky: a reduction ran past ``max_channels`` (its late blocks reused the
      last table row); cleared by ``clear_counters``.
    """

    def __init__(self, *, block_size=16, max_channels=4096, pipeline_stages=1, flow_control="stall"):
        check_parameters(block_size=block_size, max_channels=max_channels, pipeline_stages=pipeline_stages,
                         flow_control=flow_control)
        self._block_size = block_size
        self._max_channels = max_channels
        self._pipeline_stages = pipeline_stages
        self._flow_control = flow_control
        self._rows = max_channels // block_size
        # A one-row table would have a zero-width row address, which Verilog tools reject; the second
        # row is never read.
        self._table_depth = max(self._rows, 2)
        block = block_layout(("nvfp4", "fp8"), block_size)
        in_fields = {"values": data.ArrayLayout(16, block_size), "first": 1, "last": 1}
        out_fields = {"block": block, "first": 1, "last": 1}
        in_layout, out_layout = data.StructLayout(in_fields), data.StructLayout(out_fields)
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
    def pipeline_stages(self):
        return self._pipeline_stages

    @property
    def flow_control(self):
        return self._flow_control

    @property
    def result_entries(self):
        """The result FIFO's depth under credit flow control (0 under stall): latency + 1, so that blocks
        run at one per cycle while ``o`` is ready (a credit comes back on the edge after its result leaves)."""
        return self.latency + 1 if self._flow_control == "credit" else 0

    @property
    def latency(self):
        """Cycles from the edge that takes a block to the earliest edge that can transfer its result: one
        per cut and the output register."""
        return self._pipeline_stages + 1

    def elaborate(self, platform):
        m = Module()
        B = self._block_size
        pipeline = StallPipeline(m, self.i, self.o, credits=self.result_entries, reserves=Const(1))
        enable = pipeline.enable
        cuts = set(CUTS[:self._pipeline_stages])

        # Configuration registers and the sensitivity table (one row of B codes per block position).
        scale_exponent = Signal(signed(8))
        threshold = Signal(32)
        with m.If(self.config.set_registers):
            m.d.sync += [scale_exponent.eq(self.config.scale_exponent), threshold.eq(self.config.threshold)]
        m.submodules.table = table = memory.Memory(shape=data.ArrayLayout(8, B), depth=self._table_depth, init=[])
        write = table.write_port()
        m.d.comb += [write.addr.eq(self.config.table_row), write.data.eq(self.config.table_data),
                     write.en.eq(self.config.table_write)]
        # With a cut, the table's read is synchronous and enabled with the pipeline: it stands in for the
        # register of the codes at a late cut, before the score terms need them (same edge, held while
        # stalled), so the table can be a block RAM, and what travels down the stages before it is the
        # block's row, not its B codes.
        if cuts:
            read = table.read_port(domain="sync", transparent_for=())
            m.d.comb += read.en.eq(enable)
        else:
            read = table.read_port(domain="comb")

        # The block's position in its reduction (same rule as the dot unit: first, or after a last).
        in_reduction = Signal()
        position = Signal(range(self._rows + 2))  # saturates at rows + 1
        start = self.i.payload.first | ~in_reduction
        row = Signal(range(self._table_depth))
        m.d.comb += row.eq(Mux(start, 0, Mux(position >= self._rows, self._rows - 1, position)))
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [in_reduction.eq(~self.i.payload.last),
                         position.eq(Mux(start, 1, Mux(position > self._rows, position, position + 1)))]
            with m.If(~start & (position >= self._rows)):
                m.d.sync += self.table_overflow.eq(1)

        # What is in flight travels in one dict, registered whole at each cut P places. T travels with its
        # block, so a register write while blocks are in flight applies to later blocks only, for k and T
        # alike. The block's table row travels with it to the read (``_table_join``), and its codes after it.
        live = {"first": self.i.payload.first, "last": self.i.payload.last, "threshold": threshold}
        valid = pipeline.input_valid
        codes_read = [read.data[i] for i in range(B)]
        join = _table_join(cuts)
        assert (join is None) == (not cuts)  # a synchronous read has a cut to stand in for
        if join is None:
            m.d.comb += read.addr.eq(row)
            live["f"] = codes_read
        else:
            live["row"] = row

        def cut(name):
            nonlocal valid, live
            if name in cuts:
                if name == join:
                    m.d.comb += read.addr.eq(live.pop("row"))
                valid, live = _register(pipeline, valid, live)
                if name == join:
                    live["f"] = codes_read

        # BF16 in: each element's magnitude key (``magnitude_key``) and the block's NaN/Inf flags. The
        # elements travel as their BF16 bits until the scales' divisions end, and are unpacked there: the
        # bits are narrower than the unpacked form in the registers of the amax and scale stages.
        flags = [unpack_bf16(m, self.i.payload.values[i], scale_exponent, f"x{i}_in") for i in range(B)]
        has_inf = Signal(name="has_inf")
        forced = Signal()
        m.d.comb += [has_inf.eq(Cat(f["inf"] for f in flags).any()),
                     forced.eq(Cat(f["nan"] | f["inf"] for f in flags).any())]
        live.update(bf16=[self.i.payload.values[i] for i in range(B)], scale_exponent=scale_exponent,
                    has_inf=has_inf, forced=forced,
                    amax_candidates=[magnitude_key(m, self.i.payload.values[i], f, f"x{i}")
                                     for i, f in enumerate(flags)])
        cut("unpack")

        # The largest magnitude key, then unpacked with k as the elements are. One tree level per cut at
        # B = 16 (``_amax_tree_stops``).
        pick = lambda a, b, name: _larger(m, a, b, name)  # noqa: E731
        level = 0
        for stop, name in zip(_amax_tree_stops(B), ("amax_l1", "amax_mid", "amax_l3", "amax_key")):
            live["amax_candidates"] = _tree_levels(live["amax_candidates"], pick, "amax_l", level, stop)
            level = stop
            cut(name)
        amax_key = live.pop("amax_candidates")[0]
        amax = unpack_bf16(m, Cat(amax_key, 0), live["scale_exponent"], "amax_x")
        live.update(amax_sig=amax["fsig"], amax_exp=amax["exp"])
        cut("amax")

        # Both scales, RNE(amax' / 6) and RNE(amax' / 448), their divisions split in three.
        amax_sig, amax_exp = normalize(m, live.pop("amax_sig"), live.pop("amax_exp"), "amax")
        live.update(amax=amax_sig, amax_exp=amax_exp)
        cut("amax_normalized")
        amax_exp = live.pop("amax_exp")
        scales = {}
        for name, (den_sig, den_exp) in (("s4", _SCALE_6), ("s8", _SCALE_448)):
            den_exp = Const(den_exp, signed(4))
            scales[name] = {"base": ratio_base(m, amax_exp, den_exp, UE4M3, name),
                            **_start_division(m, live["amax"], 4, name)}
        live["scales"] = scales
        for positions, name in _SCALE_QUOTIENT_CHUNKS:
            for key, (den_sig, _) in (("s4", _SCALE_6), ("s8", _SCALE_448)):
                live["scales"][key] = _divide_chunk(m, live["amax"], live["scales"][key], Const(den_sig, 4),
                                                    positions, key)
            cut(f"scale_{name}")
            if name == _EXPONENT_START:
                for key, division in live["scales"].items():
                    _start_exponent(m, division, UE4M3, key)
        scale_exponent = live.pop("scale_exponent")
        live["elements"] = [unpack_bf16(m, bits, scale_exponent, f"x{i}") for i, bits in enumerate(live.pop("bf16"))]
        zero = Signal(name="amax_zero")
        m.d.comb += zero.eq(live.pop("amax") == 0)
        live["scales"] = {key: _round(m, division, key) for key, division in live["scales"].items()}
        live["scales_zero"] = zero
        cut("scale_rounding")
        elements = []
        for i, element in enumerate(live.pop("elements")):
            norm_sig, norm_exp = normalize(m, element["fsig"], element["exp"], f"x{i}_n")
            elements.append({"sign": element["sign"], "sig": norm_sig, "exp": norm_exp, "nan": element["nan"],
                             "inf": element["inf"]})
        live["elements"] = elements
        scales, zero = live.pop("scales"), live.pop("scales_zero")
        s4 = quotient_code(m, scales["s4"], zero, UE4M3, "s4")
        s8 = quotient_code(m, scales["s8"], zero, UE4M3, "s8")
        s8_used = Signal(8, name="s8_used")
        m.d.comb += s8_used.eq(Mux(live.pop("has_inf"), _UE4M3_448, s8))
        live.update(s4=s4, s8_used=s8_used)
        cut("scales")

        # Both candidates per element: x' / s rounded to E2M1 and E4M3, the divisions one quotient bit per
        # chunk (``_QUOTIENT_CHUNKS``).
        s4_decoded = decode_scale(m, live["s4"], "s4_dec")
        s8_decoded = decode_scale(m, live["s8_used"], "s8_dec")
        s4_sig, s4_exp = normalized_scale(m, s4_decoded, "s4_dec")
        s8_sig, s8_exp = normalized_scale(m, s8_decoded, "s8_dec")
        live["divisors"] = {"s4": (s4_sig, s4_exp), "s8": (s8_sig, s8_exp)}
        live["gap"] = scale_gap(m, s4_decoded, s8_decoded, "d")
        cut("divisors")
        if "divisor_copies" in cuts:
            spread = {key: [copies(m, value, B, f"{key}_dec_{part}") for value, part in zip(pair, ("sig", "exp"))]
                      for key, pair in live.pop("divisors").items()}
            for i, element in enumerate(live["elements"]):
                element["divisors"] = {key: (sig[i], exp[i]) for key, (sig, exp) in spread.items()}
            s8_exponent = decode_scale(m, live["s8_used"], "s8_dec_term").exponent
            live["term_exponents"] = copies(m, s8_exponent, B, "s8_term_exp")
        cut("divisor_copies")
        shared = live.get("divisors")
        for i, element in enumerate(live["elements"]):
            divisors = element.pop("divisors", shared)
            (s4_sig, s4_exp), (s8_sig, s8_exp) = divisors["s4"], divisors["s8"]
            if shared is None:
                element["divisors"] = (s4_sig, s8_sig)
            element["div4"] = {"base": ratio_base(m, element["exp"], s4_exp, E2M1, f"q4_{i}"),
                               **_start_division(m, element["sig"], 4, f"q4_{i}")}
            element["div8"] = {"base": ratio_base(m, element.pop("exp"), s8_exp, E4M3, f"q8_{i}"),
                               **_start_division(m, element["sig"], 4, f"q8_{i}")}
        if shared is not None:  # in place: the registers keep their order, and so their names
            live["divisors"] = (shared["s4"][0], shared["s8"][0])
        for positions, name in _QUOTIENT_CHUNKS:
            for i, element in enumerate(live["elements"]):
                s4_sig, s8_sig = element.get("divisors", live.get("divisors"))
                element["div4"] = _divide_chunk(m, element["sig"], element["div4"], s4_sig, positions, f"q4_{i}")
                element["div8"] = _divide_chunk(m, element["sig"], element["div8"], s8_sig, positions, f"q8_{i}")
            cut(name)
            if name == _EXPONENT_START:
                for i, element in enumerate(live["elements"]):
                    _start_exponent(m, element["div4"], E2M1, f"q4_{i}")
                    _start_exponent(m, element["div8"], E4M3, f"q8_{i}")
        live.pop("divisors", None)
        for element in live["elements"]:
            element.pop("divisors", None)
        for i, element in enumerate(live["elements"]):
            zero = Signal(name=f"x{i}_zero")
            m.d.comb += zero.eq(element.pop("sig") == 0)
            element.update(zero=zero, div4=_round(m, element["div4"], f"q4_{i}"),
                           div8=_round(m, element["div8"], f"q8_{i}"))
        cut("rounding")
        s4_zero = decode_scale(m, live["s4"], "s4_dec_zero").zero
        s8_zero = decode_scale(m, live["s8_used"], "s8_dec_zero").zero
        q4_codes, q8_codes = [], []
        for i, element in enumerate(live.pop("elements")):
            q4_mag = quotient_code(m, element["div4"], element["zero"], E2M1, f"q4_{i}")
            q8_mag = quotient_code(m, element["div8"], element["zero"], E4M3, f"q8_{i}")
            q4, q8 = element_codes(m, q4_mag, q8_mag, element, s4_zero, s8_zero, i)
            q4_codes.append(q4)
            q8_codes.append(q8)
        live.update(q4=q4_codes, q8=q8_codes)
        cut("codes")

        # |D| = |s4*q4 - s8*q8| in units of s8's exponent (``perturbation``).
        s4_decoded = decode_scale(m, live["s4"], "s4_dec_value")
        s8_decoded = decode_scale(m, live["s8_used"], "s8_dec_value")
        gap = live.pop("gap")
        # This unit is built for clock rate: its small products in logic, not in MULT18X18Ds (``_product``).
        live["products"] = [magnitude_products(m, s4_decoded, s8_decoded, gap, live["q4"][i], live["q8"][i], i,
                                               in_logic=True) for i in range(B)]
        cut("magnitude_products")
        live["magnitudes"] = [shift_magnitudes(m, products, i) for i, products in enumerate(live.pop("products"))]
        cut("magnitudes")
        live["deltas"] = [magnitude_distance(m, p4, p8, i) for i, (p4, p8) in enumerate(live.pop("magnitudes"))]
        cut("perturbations")

        # Score terms F * Δ̂² as (mantissa, exponent) pairs: Δ̂ first, then its square, then F.
        truncated = [truncate_delta(m, magnitude, i) for i, magnitude in enumerate(live.pop("deltas"))]
        live["truncated"] = truncated
        cut("delta_hat")
        live["squares"] = [(square_partials(m, mantissa, _SQUARE_PARTS, f"dm{i}"), shift)
                           for i, (mantissa, shift) in enumerate(live.pop("truncated"))]
        cut("square_mid")
        live["squares"] = [(_sum_all(m, partials, f"dm{i}_sq"), shift)
                           for i, (partials, shift) in enumerate(live.pop("squares"))]
        cut("square")
        if "term_exponents" in live:
            s8_exponents = live.pop("term_exponents")
        else:
            s8_exponents = [decode_scale(m, live["s8_used"], "s8_dec_term").exponent] * B
        terms = [score_term(m, live["f"][i], squared, shift, s8_exponents[i], i, in_logic=True)
                 for i, (squared, shift) in enumerate(live.pop("squares"))]
        del live["f"]
        if "top_copies" in cuts:
            pairs = [[copies(m, value, 2, value.name) for value in term] for term in terms]
            live["terms"] = [(tm[0], te[0]) for tm, te in pairs]
            live["window_terms"] = [(tm[1], te[1]) for tm, te in pairs]
        else:
            live["terms"] = terms
        cut("terms")

        # Window the terms below the largest one (its leading position E), sum, compare with T. The maximum
        # and the sum are trees, each cut after its first half of levels.
        first_levels = ((B - 1).bit_length() + 1) // 2
        live["leading"] = [term_leading(m, tm, te, i) for i, (tm, te) in enumerate(live["terms"])]
        if "window_terms" in live:
            live["terms"] = live.pop("window_terms")
        cut("leading")
        larger = lambda a, b, name: _larger(m, a, b, name)  # noqa: E731
        live["leading"] = _tree_levels(live["leading"], larger, "top", 0, first_levels)
        cut("top_mid")
        live["top"] = _tree_levels(live.pop("leading"), larger, "top", first_levels, None)[0]
        cut("top")
        live["tops"] = copies(m, live.pop("top"), B + 1, "top") if "top_copies" in cuts else [live.pop("top")] * (B + 1)
        cut("top_copies")
        # T's side of the compare needs only E: formed beside the window and sum, it travels with them.
        tops = live.pop("tops")
        live["frame"] = threshold_frame(m, tops[B], live.pop("threshold"), score_width(B))
        live["units"] = [windowed_term(m, tm, te, tops[i], i) for i, (tm, te) in enumerate(live.pop("terms"))]
        cut("window")
        add = lambda a, b, name: _sum(m, a, b, name)  # noqa: E731
        live["units"] = _tree_levels(live["units"], add, "score_l", 0, first_levels)
        cut("sum_mid")
        total = Signal(score_width(B), name="score_units")
        m.d.comb += total.eq(_tree_levels(live.pop("units"), add, "score_l", first_levels, None)[0])
        live["total"] = total
        cut("sum")

        # score = total * 2**(E - 85) against T = t_sig * 2**t_exp (FP32), exactly.
        live["aligned"] = threshold_bound(m, live.pop("total"), live.pop("frame"))
        cut("align")
        greater = score_above(m, live.pop("aligned"))
        choose_fp8 = Signal(name="choose_fp8")
        m.d.comb += choose_fp8.eq(live.pop("forced") | greater)
        live["fp8"] = choose_fp8
        # The decision selects every output code and the scale: registered, its fan-out starts at a flop.
        cut("decision")
        fp8 = live["fp8"]

        result = Signal(self.o.payload.shape(), name="o_result")
        m.d.comb += [result.first.eq(live["first"]), result.last.eq(live["last"]), result.block.fp8.eq(fp8),
                     result.block.scale.eq(Mux(fp8, live["s8_used"], live["s4"]))]
        m.d.comb += [result.block.codes[i].eq(Mux(fp8, live["q8"][i], live["q4"][i])) for i in range(B)]
        pipeline.emit(valid, result)
        with m.If(self.o.valid & self.o.ready):
            with m.If(self.o.payload.block.fp8):
                m.d.sync += self.fp8_blocks.eq(self.fp8_blocks + (self.fp8_blocks != 0xFFFFFFFF))
            with m.Else():
                m.d.sync += self.nvfp4_blocks.eq(self.nvfp4_blocks + (self.nvfp4_blocks != 0xFFFFFFFF))
        with m.If(self.config.clear_counters):
            m.d.sync += [self.fp8_blocks.eq(0), self.nvfp4_blocks.eq(0), self.table_overflow.eq(0)]
        return m


_DATAFLOW = ("unpack", "amax_l1", "amax_mid", "amax_l3", "amax_key", "amax", "amax_normalized", "scale_div3",
             "scale_div6", "scale_quotients", "scale_rounding", "scales", "divisors", "divisor_copies", "div1",
             "div2", "div3", "div4", "div5", "div6", "div7", "div8", "quotients", "rounding",
             "codes", "magnitude_products", "magnitudes", "perturbations", "delta_hat", "square_mid", "square",
             "terms", "leading", "top_mid", "top", "top_copies", "window", "sum_mid", "sum", "align", "decision")


def _table_join(cuts):
    """The cut whose register the sensitivity table's synchronous read stands in for (None without cuts:
    the read is asynchronous): late, as the score terms are the codes' only use, but one cut before the
    last placed before them where there are two, so that the next cut registers the read's data as it
    comes out (an ECP5 block RAM's clock-to-output alone is 5.6 ns)."""
    placed = [name for name in _DATAFLOW[:_DATAFLOW.index("terms")] if name in cuts]
    return placed[-2] if len(placed) >= 2 else (placed[-1] if placed else None)


# The restoring divisions' quotient bits (9, MSB first) in chunks, and the cut after each: the scales' in
# three chunks of three, the elements' (16 times as many, spread wider, their divisors broadcast to all
# sixteen) one bit each, so that the deepest pipeline has one compare-and-subtract carry chain per stage.
# The cuts after 3 and 6 bits come first in CUTS, then those after 2, 5 and 8, then 1, 4 and 7.
_SCALE_QUOTIENT_CHUNKS = ((range(6, 9), "div3"), (range(3, 6), "div6"), (range(0, 3), "quotients"))
_QUOTIENT_CHUNKS = tuple((range(bit, bit + 1), f"div{9 - bit}" if bit else "quotients") for bit in range(8, -1, -1))
# A division's rounding exponent work starts beside the quotient bits after the cut that ends this chunk.
_EXPONENT_START = "div3"


def _start_division(m, num_sig, width, name):
    """A round_ratio division of ``num_sig`` before its first quotient bit: the partial remainder (of the
    divisor's ``width``) and no bits yet."""
    partial = Signal(width, name=f"{name}_r{RATIO_QUOTIENT_BITS}")
    m.d.comb += partial.eq(ratio_dividend(num_sig) >> RATIO_QUOTIENT_BITS)
    return {"partial": partial, "bits": []}


def _start_exponent(m, division, fmt, name):
    """Once a division has its top quotient bit: its rounding's exponent work (``quotient_exponent``), in
    the stage of the next quotient bits, in place of the base."""
    division["exponent"] = quotient_exponent(m, division.pop("base"), division["bits"][-1], fmt, name)


def _round(m, division, name):
    """A finished division, rounded (``quotient_round``): what ``quotient_code`` needs."""
    return quotient_round(m, Cat(*division["bits"]), division["partial"], division["exponent"], name)


def _divide_chunk(m, num_sig, division, divisor, positions, name):
    bits, partial = divide_steps(m, ratio_dividend(num_sig), divisor, division["partial"], positions, name)
    return {**division, "partial": partial, "bits": bits + division["bits"]}


def _larger_magnitude(m, a, b, name):
    (sa, ea), (sb, eb) = a, b
    a_larger = (sb == 0) | ((sa != 0) & ((ea > eb) | ((ea == eb) & (sa >= sb))))
    s = Signal(8, name=f"{name}_sig")
    e = Signal(signed(11), name=f"{name}_exp")
    m.d.comb += [s.eq(Mux(a_larger, sa, sb)), e.eq(Mux(a_larger, ea, eb))]
    return s, e


def _amax_tree_stops(block_size):
    """The amax tree's level after each of its cuts ``amax_l1``, ``amax_mid``, ``amax_l3`` and ``amax_key``:
    the halves of the tree's levels, each halved again (at B = 16: one level per stage, then the key)."""
    levels = (block_size - 1).bit_length()
    half = (levels + 1) // 2
    return ((half + 1) // 2, half, half + (levels - half + 1) // 2, levels)


def _sum_all(m, values, name):
    total = Signal(len(values[0]), name=name)  # each a part of a sum that fits the same width
    m.d.comb += total.eq(sum(values))
    return total


def _sum(m, a, b, name):
    total = Signal(max(len(a), len(b)) + 1, name=name)
    m.d.comb += total.eq(a + b)
    return total


def _larger(m, a, b, name):
    larger = Signal.like(a, name=name)
    m.d.comb += larger.eq(Mux(b > a, b, a))
    return larger


def _tree(values, pick, name):
    """Reduce ``values`` pairwise with ``pick(a, b, name)`` in a balanced tree: log2(n) levels deep."""
    return _tree_levels(values, pick, name, 0, None)[0]


def _tree_levels(values, pick, name, level, stop):
    """Levels ``level`` up to ``stop`` (exclusive; None: to the root) of ``_tree``'s reduction: the list of
    values left after them, so a cut can register a tree between its levels."""
    values = list(values)
    while len(values) > 1 and (stop is None or level < stop):
        paired = [pick(values[k], values[k + 1], f"{name}{level}_{k // 2}") for k in range(0, len(values) - 1, 2)]
        if len(values) % 2:
            paired.append(values[-1])
        values = paired
        level += 1
    return values


def _register(pipeline, valid, live):
    """``pipeline.cut`` of a nested dict/list/tuple of values; returns the same structure, registered."""
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

    def rebuild(node, taken):
        if isinstance(node, dict):
            return {key: rebuild(value, taken) for key, value in node.items()}
        if isinstance(node, (list, tuple)):
            return type(node)(rebuild(value, taken) for value in node)
        return next(taken)

    collect(live)
    valid, registered = pipeline.cut(valid, leaves, True)
    return valid, rebuild(live, iter(registered))


# Per-element and per-block pieces of the datapath, shared with the narrow unit (hw/actq_narrow.py). Each
# names its signals from ``name`` or the element index ``i`` exactly as this unit always has.

def unpack_bf16(m, bits, scale_exponent, name):
    """A BF16 element unpacked: x' = x * 2**-k as (sign, significand with NaN/Inf cleared, exponent at the
    significand's LSB), and the NaN and Inf flags."""
    exponent_field, mantissa, sign = bits[7:15], bits[:7], bits[15]
    normal = exponent_field.any()
    significand = Signal(8, name=f"{name}_sig")
    exponent = Signal(signed(11), name=f"{name}_exp")
    m.d.comb += [significand.eq(Cat(mantissa, normal)),
                 exponent.eq(Mux(normal, exponent_field, 1) - _BF16_BIAS_AND_MANTISSA - scale_exponent)]
    nonfinite = exponent_field.all()
    nan = Signal(name=f"{name}_nan")
    inf = Signal(name=f"{name}_inf")
    m.d.comb += [nan.eq(nonfinite & mantissa.any()), inf.eq(nonfinite & ~mantissa.any())]
    finite_sig = Signal(8, name=f"{name}_fsig")
    m.d.comb += finite_sig.eq(Mux(nan | inf, 0, significand))
    return {"sign": sign, "fsig": finite_sig, "exp": exponent, "nan": nan, "inf": inf}


def magnitude_key(m, bits, unpacked, name):
    """A BF16 element's magnitude bits, 0 for NaN and Inf (as ``unpack_bf16`` clears their significand):
    as unsigned integers these keys order the magnitudes (subnormals share the smallest normal exponent),
    and k scales a block's elements alike, so one 15-bit compare per node finds amax' in place of a
    lexicographic compare of (exponent - k, significand) pairs."""
    key = Signal(15, name=f"{name}_key")
    m.d.comb += key.eq(Mux(unpacked["nan"] | unpacked["inf"], 0, bits[:15]))
    return key


def decode_scale(m, code, name):
    """A UE4M3 scale decoded. Each stage that needs the scale decodes its code again: the 8-bit code
    is what the cuts register, not the wider decoded form."""
    m.submodules[name] = decoder = Decoder(format=UE4M3)
    m.d.comb += decoder.code.eq(code)
    return decoder.decoded


def normalized_scale(m, decoded, name):
    """A decoded UE4M3 scale as (significand, exponent) normalised for round_ratio's division."""
    exponent = Signal(signed(6), name=f"{name}_e")
    m.d.comb += exponent.eq(decoded.exponent - (UE4M3.bias + UE4M3.mantissa_bits))
    return normalize(m, decoded.significand, exponent, f"{name}_n")


def _product(m, a, b, in_logic, name):
    """``a * b``: in logic (``small_product``) for the units built for clock rate, else the multiply
    operator, which the ECP5 flow maps to a MULT18X18D (fewer LUTs, for the units built for area)."""
    if in_logic:
        return small_product(m, a, b, name)
    product = Signal(len(a) + len(b), name=name)
    m.d.comb += product.eq(a * b)
    return product


def magnitude_product(m, significand, shift, fmt, code, width, name, *, in_logic=False):
    """|sig * element| << ``shift`` (the element at its significand's LSB times 2**(exponent - 1), E4M3
    and E2M1 alike) before its shift: the significands' product (4 x 2 or 4 x 4 bits, ``_product``) and
    the shift amount. Multiplying the two integer values instead would build an 18 x 18-bit multiplier
    per element."""
    m.submodules[name] = decoder = Decoder(format=fmt)
    m.d.comb += decoder.code.eq(code)
    element = decoder.decoded
    product = _product(m, significand, element.significand, in_logic, f"{name}_sig")
    # Decoded exponents are >= 1 (subnormals share the smallest normal one): the shift is >= 0.
    amount = Signal(range(width), name=f"{name}_shift")
    m.d.comb += amount.eq(shift + element.exponent - 1)
    return product, amount


def shift_magnitude(m, product, amount, width, name):
    """``magnitude_product``'s product shifted into an integer of ``width`` bits."""
    magnitude = Signal(width, name=name)
    m.d.comb += magnitude.eq(product << amount)
    return magnitude


def element_codes(m, q4_mag, q8_mag, element, s4_zero, s8_zero, i):
    """The element's codes q4 (E2M1) and q8 (E4M3) from the rounded magnitudes, its sign, the zero scales
    and the non-finite rules (numerics §9 step 7)."""
    q4 = Signal(4, name=f"q4_{i}")
    q8 = Signal(8, name=f"q8_{i}")
    m.d.comb += [q4.eq(Mux(s4_zero, 0, Cat(q4_mag, element["sign"]))),
                 q8.eq(Mux(s8_zero, 0, Cat(q8_mag, element["sign"])))]
    with m.If(element["inf"]):
        m.d.comb += q8.eq(Cat(Const(_UE4M3_448, 7), element["sign"]))
    with m.If(element["nan"]):
        m.d.comb += q8.eq(_E4M3_NAN)
    return q4, q8


# |D| in units of s8's exponent: |s4*q4 - s8*q8| = D' * 2**(e8 - 1) * 2**-18 (e8 = s8's decoded exponent),
# so only the exponent difference e4 - e8 of the two scales reaches the per-element shifters. It is 0..7
# in every block that is scored: s4 = RNE(a/6) >= s8 = RNE(a/448) and s4/s8 < 85 where both are normal
# (at most 7 binades apart), and a subnormal, zero or saturated scale only brings them closer. Blocks with
# NaN or Inf are forced to FP8 (s8 = 448 with an Inf), their score unused: the clamp only touches those.
_SCALE_GAP = range(8)
_DELTA_WIDTH = 23  # D' < 63 * 2**(7 + 3 + 7) and 225 * 2**14


def perturbation(m, s4_decoded, s8_decoded, q4, q8, i):
    """D' = |s4*q4 - s8*q8| * 2**18 / 2**(e8 - 1), an integer (``score_term`` adds the 2·(e8 - 1) back to
    the term's exponent; Δ̂'s truncation to 12 significant bits is the same at any power of two). s4 * q4
    is its significands' product shifted by e4 - e8 + 8 and q4's exponent, s8 * q8 by q8's. Only |D| is
    scored, and q4 and q8 both carry the element's sign or are zero, so |D| is the distance of the
    magnitudes (a NaN's q8 has no sign, but its block is forced to FP8, score unused)."""
    return magnitude_distance(m, *scaled_magnitudes(m, s4_decoded, s8_decoded, q4, q8, i), i)


def scale_gap(m, s4_decoded, s8_decoded, name):
    """The scales' exponent difference e4 - e8, clamped to ``_SCALE_GAP``: one per block, so a pipeline
    forms it once, as soon as the scales are known, not in each element's product stage."""
    gap = Signal(signed(5), name=f"{name}_gap")
    m.d.comb += gap.eq(s4_decoded.exponent - s8_decoded.exponent)
    clamped = Signal(_SCALE_GAP, name=f"{name}_gap_used")
    m.d.comb += clamped.eq(Mux(gap < 0, 0, Mux(gap > _SCALE_GAP[-1], _SCALE_GAP[-1], gap)))
    return clamped


def magnitude_products(m, s4_decoded, s8_decoded, gap, q4, q8, i, *, in_logic=False):
    """``perturbation``'s two products, s4*q4 and s8*q8, as (significand product, shift) pairs; ``gap``
    from ``scale_gap``."""
    p4 = magnitude_product(m, s4_decoded.significand, gap + 8, E2M1, q4, _DELTA_WIDTH, f"p4_{i}",
                           in_logic=in_logic)
    p8 = magnitude_product(m, s8_decoded.significand, 0, E4M3, q8, _DELTA_WIDTH, f"p8_{i}", in_logic=in_logic)
    return p4, p8


def shift_magnitudes(m, products, i):
    """``magnitude_products`` shifted: |s4*q4| and |s8*q8| in ``perturbation``'s units."""
    return tuple(shift_magnitude(m, product, amount, _DELTA_WIDTH, f"p{bits}_{i}")
                 for bits, (product, amount) in zip((4, 8), products))


def scaled_magnitudes(m, s4_decoded, s8_decoded, q4, q8, i):
    """``perturbation``'s two products, |s4*q4| and |s8*q8|, in its units, before their distance."""
    gap = scale_gap(m, s4_decoded, s8_decoded, f"d{i}")
    return shift_magnitudes(m, magnitude_products(m, s4_decoded, s8_decoded, gap, q4, q8, i), i)


def magnitude_distance(m, p4, p8, i):
    """|p4 - p8|: ``perturbation``'s D'."""
    delta = Signal(_DELTA_WIDTH, name=f"d{i}")
    m.d.comb += delta.eq(Mux(p4 >= p8, p4 - p8, p8 - p4))
    return delta


def truncate_delta(m, magnitude, i):
    """Δ̂' = D' truncated to its 12 most significant bits, as (mantissa, shift)."""
    msb = leading_one(m, magnitude, f"dm{i}")
    shift = Signal(range(len(magnitude) - _DELTA_BITS + 1), name=f"dm{i}_shift")
    m.d.comb += shift.eq(Mux(msb >= _DELTA_BITS, msb - (_DELTA_BITS - 1), 0))
    mantissa = Signal(_DELTA_BITS, name=f"dm{i}_m")
    m.d.comb += mantissa.eq(magnitude >> shift)
    return mantissa, shift


def score_term(m, f_code, squared, shift, s8_exponent, i, *, in_logic=False):
    """The term F * Δ̂² as (mantissa, exponent) from the sensitivity code, Δ̂'² = squared * 2**(2*shift)
    (Δ̂' from ``perturbation``'s D') and s8's decoded exponent: Δ̂ = Δ̂' * 2**(s8_exponent - 1). The
    product F * squared as ``_product`` makes it."""
    m.submodules[f"f{i}_dec"] = f_dec = Decoder(format=UE4M3)
    m.d.comb += f_dec.code.eq(f_code)
    term_mantissa = Signal(28, name=f"tm{i}")
    term_exponent = Signal(range(2 * 25 + 16), name=f"te{i}")
    m.d.comb += [term_mantissa.eq(_product(m, squared, f_dec.decoded.significand, in_logic, f"tm{i}_p")),
                 term_exponent.eq(2 * (shift + s8_exponent - 1) + f_dec.decoded.exponent - 1)]
    return term_mantissa, term_exponent


def term_leading(m, tm, te, i):
    """A term's leading position (0 for a zero term)."""
    position = Signal(range(2 * 25 + 16 + 28), name=f"tl{i}")
    m.d.comb += position.eq(Mux(tm == 0, 0, leading_one(m, tm, f"tm{i}") + te))
    return position


def windowed_term(m, tm, te, top, i):
    """A term truncated to the window below the block's top position E, in units of 2**(E - 40)."""
    distance = Signal(range(2 * 25 + 16 + 28 + 1), name=f"ta{i}")  # E - te
    m.d.comb += distance.eq(top - te)
    unit = Signal(_WINDOW_BITS + 1, name=f"tu{i}")
    m.d.comb += unit.eq((tm << _WINDOW_BITS) >> distance)
    return unit


def score_width(block_size):
    """The width of a block's windowed sum."""
    return _WINDOW_BITS + 1 + (block_size - 1).bit_length()


def align_score(m, total, top, threshold):
    """score = total * 2**(E - 85) against T = t_sig * 2**(t_field - 150) (FP32 bits, sign ignored), brought
    into the integer frame of ``total``: score > T exactly when total > floor(T * 2**(85 - E)), as ``total`` is
    an integer. That bound is T's significand shifted once (no normalisation of either side), with two
    flags: ``never`` when T is Inf/NaN or at least 2**W (W = ``total``'s width: no windowed sum reaches it),
    and a bound of 0 when T is zero, subnormal or below 1 in that frame (any nonzero score is at least
    2**-85, above every subnormal). What ``score_above`` compares."""
    return threshold_bound(m, total, threshold_frame(m, top, threshold, len(total)))


def threshold_frame(m, top, threshold, width):
    """``align_score``'s work that needs only E and T, not the sum: the shift of T's significand and the
    flags, for a windowed sum of ``width`` bits. A pipeline forms it beside the window and sum."""
    t_field, t_mantissa = threshold[23:31], threshold[:23]
    # T * 2**(85 - E) = t_sig * 2**offset for a normal T; its floor is 0 below offset = -23.
    offset = Signal(signed(10), name="t_offset")
    m.d.comb += offset.eq(t_field - top - (_FP32_BIAS_AND_MANTISSA + _SCORE_LSB - _WINDOW_BITS))
    shift = Signal(range(width), name="t_shift")
    zero = Signal(name="t_zero")
    never = Signal(name="t_never")
    m.d.comb += [shift.eq(offset + 23), zero.eq((t_field == 0) | (offset < -23)),
                 never.eq(t_field.all() | (offset > width - 24))]
    return {"significand": Cat(t_mantissa, 1), "shift": shift, "zero": zero, "never": never}


def threshold_bound(m, total, frame):
    """``align_score`` from ``threshold_frame``'s result: T's significand shifted into ``total``'s frame."""
    width = len(total)
    shifted = Signal(23 + width, name="t_shifted")
    m.d.comb += shifted.eq(frame["significand"] << frame["shift"])
    bound = Signal(width, name="t_bound")
    m.d.comb += bound.eq(Mux(frame["zero"], 0, shifted[23:]))
    return {"total": total, "bound": bound, "never": frame["never"]}


def score_above(m, aligned):
    """score > T, exactly, from ``align_score``'s result."""
    greater = Signal(name="score_above_threshold")
    m.d.comb += greater.eq(~aligned["never"] & (aligned["total"] > aligned["bound"]))
    return greater
