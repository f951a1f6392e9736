"""The FGMP dot-product unit (docs/numerics.md §8): L lanes, exact accumulation, one block pair per cycle."""

from dataclasses import dataclass

from amaranth import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .arith import combine_leading_one, leading_one, leading_one_chunks
from .decoder import Decoder
from .formats import E2M1, E4M3, UE4M3, Format
from .pipeline import FLOW_CONTROLS, StallPipeline, check_count, check_flow_control, check_pipeline_stages

__all__ = ["CUTS", "MAX_PIPELINE_STAGES", "DotUnit", "FORMATS", "DATAPATHS", "FLOW_CONTROLS", "block_layout"]

# Where the register cuts go, in the order a deeper pipeline adds them (docs/interfaces.md): depth P takes
# the first P. Each one after the third was placed where the then-critical path ran on the ECP5.
CUTS = ("tree", "products", "term", "convert_lod", "convert_round", "accumulate", "convert_shift", "term_multiply",
        "term_sum", "tree_mid", "decode", "convert_magnitude", "element_multiply", "term_pairs", "convert_lod_chunks",
        "activation_decode", "convert_shift_coarse")
MAX_PIPELINE_STAGES = len(CUTS)
FORMATS = ("nvfp4", "fp8")
# shared: every pairing on one FP8-width path. split: FP4xFP4 pairs on a narrow path of their own
# (docs/hardware.md, with the third path for FP4xFP8 pairs that was measured and dropped).
DATAPATHS = ("shared", "split")
_CANONICAL_NAN = 0x7FC00000
# E2M1 joins the E4M3 datapath exactly: same significand, exponent + 8 (bias 1 / 1 mantissa bit vs 7 / 3).
_E2M1_TO_E4M3_EXPONENT = (E4M3.bias + E4M3.mantissa_bits) - (E2M1.bias + E2M1.mantissa_bits)
_SCALE_SIGNIFICAND_BITS = 2 * UE4M3.significand_bits
_SCALE_SHIFT_RANGE = 2 * ((1 << UE4M3.exponent_bits) - 1) - 1  # w + x exponent - 2: 0..28
_LOD_CHUNK = 16  # the two-level leading-one detection's first level (``convert_lod_chunks``), and so the
# normalising shift's coarse step (``convert_shift_coarse``)


def _check_formats(formats):
    if not isinstance(formats, tuple) or not all(isinstance(f, str) for f in formats):
        raise TypeError(f"Formats must be a tuple of format names, not {formats!r}")
    if not formats:
        raise ValueError("Formats must name at least one of 'nvfp4', 'fp8'")
    for name in formats:
        if name not in FORMATS:
            raise ValueError(f"Unknown format {name!r}; choose from 'nvfp4', 'fp8'")
    if len(set(formats)) != len(formats):
        raise ValueError(f"Formats must not repeat, not {formats!r}")


def _check_datapath(datapath, formats):
    if not isinstance(datapath, str):
        raise TypeError(f"Datapath must be one of {', '.join(map(repr, DATAPATHS))}, not {datapath!r}")
    if datapath not in DATAPATHS:
        raise ValueError(f"Unknown datapath {datapath!r}; choose from {', '.join(map(repr, DATAPATHS))}")
    if datapath != "shared" and len(formats) != 2:
        raise ValueError(f"The {datapath} datapath needs both formats ('nvfp4', 'fp8'), not {formats!r}")


def block_layout(formats, block_size):
    """One block as the unit consumes it: codes (one per element), UE4M3 scale, precision bit (FP8 = 1)
    when both formats are enabled. NVFP4 codes sit in the low nibble of 8-bit code slots in a FGMP unit."""
    code_bits = 4 if formats == ("nvfp4",) else 8
    fields = {"codes": data.ArrayLayout(code_bits, block_size), "scale": 8}
    if len(formats) == 2:
        fields["fp8"] = 1
    return data.StructLayout(fields)


def _ceil_log2(n):
    return max(n - 1, 0).bit_length()


@dataclass(frozen=True)
class _Path:
    """One lane's element multipliers, adder tree and scale multiply for operands in formats ``a`` x ``b``
    (decoded form, numerics §7). Its signals are named with ``prefix``; products are integers at
    ``lsb_exponent``, and its terms join the accumulator shifted up to the widest path's LSB."""

    prefix: str
    a: Format
    b: Format
    # Element products after the first in ones' complement (magnitude XOR sign), each negative one's +1
    # entering the adder tree as a carry-in (``_products``, ``_tree``).
    ones_complement: bool = False

    @property
    def product_bits(self):
        return (self.a.significand_bits + self.b.significand_bits + (1 << self.a.exponent_bits) - 2
                + (1 << self.b.exponent_bits) - 2)

    @property
    def max_shift(self):
        """Largest product alignment, a + b exponent - 2 (subnormals decode to exponent 1)."""
        return (1 << self.a.exponent_bits) + (1 << self.b.exponent_bits) - 4

    @property
    def lsb_exponent(self):
        return 2 - (self.a.bias + self.a.mantissa_bits) - (self.b.bias + self.b.mantissa_bits)

    def block_sum_bits(self, block_size):
        return self.product_bits + _ceil_log2(block_size)

    def term_bits(self, block_size):
        """Signed bits of block sum x scale significand product << scale shift."""
        return self.block_sum_bits(block_size) + 1 + _SCALE_SIGNIFICAND_BITS + _SCALE_SHIFT_RANGE - 1


# The paths a datapath runs, widest first; a pairing runs on the path of its element formats.
_WIDE, _WIDE_FP4 = _Path("", E4M3, E4M3), _Path("", E2M1, E2M1)
_NARROW = _Path("n", E2M1, E2M1, ones_complement=True)  # FP4 x FP4


class DotUnit(wiring.Component):
    """One activation block broadcast to ``lanes`` weight blocks; each lane accumulates exactly over a
    reduction and emits RNE_FP32 of the sum (numerics §8).

    Parameters (keyword-only): ``lanes`` >= 1; ``block_size`` >= 1 (default 16); ``max_blocks``, the
    longest reduction in blocks that stays exact (sets the accumulator width; longer ones raise the
    ``overflow`` flag); ``pipeline_stages`` in 0..MAX_PIPELINE_STAGES, the number of register cuts, placed
    in the order of CUTS (after the adder tree, after the element products, after the scale multiply, then
    into the FP32 conversion, the accumulator, ..., between the activation's decoders and the lanes, the
    last inside the FP32 conversion's normalising shift); ``formats``, a tuple of 'nvfp4' and/or
    'fp8' (FGMP, FP8-only or FP4-only units); ``datapath`` (FGMP units): 'shared' runs every pairing on
    one FP8-width path, 'split' runs FP4xFP4 pairs on a narrow path of their own. The split datapath
    registers each path's operands and loads them only in the cycles the path is used, so an idle path
    holds still; that register is the decode cut, and adds one cycle of latency at depths without it.
    ``flow_control``: 'stall' (default) holds every register while a result waits for the sink; 'credit'
    lets the registers run free and queues results in a FIFO of ``latency`` + 1 entries (``result_entries``),
    ``i`` ready while one of them is not spoken for by a reduction in flight: no clock enable fans out to
    the datapath and ``i.ready`` does not depend on ``o.ready`` in the same cycle. Same latency, II = 1.

    Ports: ``i`` (In stream of ``{activation, weights[lanes], first, last}``), ``o`` (Out stream of
    ``{results[lanes] (FP32 bits), overflow}``, one transfer per reduction). A block with ``first`` set,
    or the first block after a ``last``, starts a reduction; ``last`` ends it. Every cycle that ``o`` is not stalled
    (stall), or that a result entry is free (credit), ``i`` is ready.
    """

    def __init__(self, *, lanes, block_size=16, max_blocks=1024, pipeline_stages=1, formats=FORMATS,
                 datapath="shared", flow_control="stall"):
        check_count("Lanes", lanes, 1)
        check_count("Block size", block_size, 1)
        check_count("Maximum blocks", max_blocks, 1)
        check_pipeline_stages(pipeline_stages, MAX_PIPELINE_STAGES)
        _check_formats(formats)
        _check_datapath(datapath, formats)
        check_flow_control(flow_control)
        self._flow_control = flow_control
        self._lanes = lanes
        self._block_size = block_size
        self._max_blocks = max_blocks
        self._pipeline_stages = pipeline_stages
        self._formats = tuple(f for f in FORMATS if f in formats)
        self._datapath = datapath
        # The largest magnitude, 2**(width - 1) units, may round up one binade: its exponent must stay <= 127.
        if self.accumulator_width + self.accumulator_lsb_exponent > 127:
            raise ValueError(f"A reduction of {max_blocks} blocks of {block_size} elements can exceed the FP32 "
                             f"range; reduce the maximum blocks or the block size")
        block = block_layout(self._formats, block_size)
        self._in_layout = data.StructLayout({
            "activation": block, "weights": data.ArrayLayout(block, lanes), "first": 1, "last": 1})
        self._out_layout = data.StructLayout({"results": data.ArrayLayout(32, lanes), "overflow": 1})
        super().__init__({
            "i": In(stream.Signature(self._in_layout)),
            "o": Out(stream.Signature(self._out_layout)),
        })

    @property
    def lanes(self):
        return self._lanes

    @property
    def block_size(self):
        return self._block_size

    @property
    def max_blocks(self):
        return self._max_blocks

    @property
    def pipeline_stages(self):
        return self._pipeline_stages

    @property
    def formats(self):
        return self._formats

    @property
    def datapath(self):
        return self._datapath

    @property
    def flow_control(self):
        return self._flow_control

    @property
    def result_entries(self):
        """The result FIFO's depth under credit flow control (0 under stall): latency + 1, so that
        one-block reductions run at one per cycle while ``o`` is ready (a credit comes back on the edge
        that transfers its result, and ``i.ready`` sees it one cycle later)."""
        return self.latency + 1 if self._flow_control == "credit" else 0

    @property
    def _paths(self):
        wide = _WIDE if "fp8" in self._formats else _WIDE_FP4
        return {"shared": (wide,), "split": (wide, _NARROW)}[self._datapath]

    @property
    def _element_format(self):
        """The unpacked form the widest multipliers see: E4M3's whenever FP8 is enabled, else E2M1's."""
        return self._paths[0].a

    @property
    def product_bits(self):
        return self._paths[0].product_bits

    @property
    def block_sum_bits(self):
        return self._paths[0].block_sum_bits(self._block_size)

    @property
    def product_lsb_exponent(self):
        """Element products of the widest path are integers at this power of two (-18 with FP8, -2 for
        FP4-only)."""
        return self._paths[0].lsb_exponent

    @property
    def accumulator_lsb_exponent(self):
        return self.product_lsb_exponent + 2 - 2 * (UE4M3.bias + UE4M3.mantissa_bits)

    @property
    def accumulator_width(self):
        """Two's complement bits: exact for any reduction of up to ``max_blocks`` blocks (numerics §8.1)."""
        return self._paths[0].term_bits(self._block_size) + _ceil_log2(self._max_blocks)

    @property
    def cuts(self):
        """The names of the register cuts this depth places (the first ``pipeline_stages`` of CUTS)."""
        return CUTS[:self._pipeline_stages]

    @property
    def latency(self):
        """Cycles from the edge that takes a reduction's last block to the earliest edge that can
        transfer its result (``o.valid`` rises one cycle before): the final and output registers, one
        per cut, and the split datapath's operand registers unless they stand in for the decode cut."""
        split_registers = self._datapath != "shared" and "decode" not in self.cuts
        return 2 + self._pipeline_stages + split_registers

    def _decode_element(self, m, name, code, fp8, *, narrow=False):
        """({format: (sign, significand, exponent)}, NaN flag) of one element. The widest path's format
        (E4M3 whenever FP8 is enabled, NVFP4 elements promoted into it; else E2M1) is always there;
        ``narrow`` adds the E2M1 code for the split datapath's narrow path, which holds codes and decodes
        them after its operand registers."""
        fmt = self._element_format
        sign = Signal(name=f"{name}_sign")
        significand = Signal(fmt.significand_bits, name=f"{name}_sig")
        exponent = Signal(fmt.exponent_bits, name=f"{name}_exp")
        nan = Signal(name=f"{name}_nan")
        if "fp8" in self._formats:
            m.submodules[f"{name}_e4m3"] = e4m3 = Decoder(format=E4M3)
            m.d.comb += e4m3.code.eq(code)
        if "nvfp4" in self._formats:
            m.submodules[f"{name}_e2m1"] = e2m1 = Decoder(format=E2M1)
            m.d.comb += e2m1.code.eq(code[:4])
        if self._formats == FORMATS:
            with m.If(fp8):
                m.d.comb += [sign.eq(e4m3.decoded.sign), significand.eq(e4m3.decoded.significand),
                             exponent.eq(e4m3.decoded.exponent), nan.eq(e4m3.decoded.nan)]
            with m.Else():
                m.d.comb += [sign.eq(e2m1.decoded.sign), significand.eq(e2m1.decoded.significand),
                             exponent.eq(e2m1.decoded.exponent + _E2M1_TO_E4M3_EXPONENT)]
        else:
            decoded = (e4m3 if "fp8" in self._formats else e2m1).decoded
            m.d.comb += [sign.eq(decoded.sign), significand.eq(decoded.significand),
                         exponent.eq(decoded.exponent)]
            if "fp8" in self._formats:
                m.d.comb += nan.eq(decoded.nan)
        forms = {fmt: (sign, significand, exponent)}
        if narrow:
            forms[E2M1] = (code[:E2M1.code_bits],)
        return forms, fp8 & nan

    def _decode_scale(self, m, name, code):
        m.submodules[name] = decoder = Decoder(format=UE4M3)
        m.d.comb += decoder.code.eq(code)
        return decoder.decoded

    def _fp8_bit(self, block):
        return block.fp8 if len(self._formats) == 2 else Const(self._formats == ("fp8",))

    @staticmethod
    def _operands(path, x_elements, w_elements):
        """[(activation element, weight element)] in ``path``'s operand formats, one pair per position."""
        return [x_forms[path.a] + w_forms[path.b] for x_forms, w_forms in zip(x_elements, w_elements)]

    @staticmethod
    def _multiplier_inputs(m, lane, path, operands):
        """[(product sign, activation significand XOR that sign, weight significand, alignment shift)]
        per position: what an element multiplier takes, so that it computes a signed product without a
        negation after it (see ``_products``). The shared datapath makes these before the ``decode`` cut,
        so each lane's multipliers start from registers of their own instead of a net broadcast to every
        lane (and, after the ``activation_decode`` cut, from the registered decoded activation instead of
        its decode selects); the split datapath makes them after its held operand registers, so an idle
        path stays still."""
        inputs = []
        for i, (xs, xsig, xexp, ws, wsig, wexp) in enumerate(operands):  # (a, b): activation, weight
            sign = Signal(name=f"{path.prefix}p{lane}_{i}_sign")
            flipped = Signal(len(xsig), name=f"{path.prefix}p{lane}_{i}_xsig")
            shift = Signal(range(path.max_shift + 1), name=f"{path.prefix}p{lane}_{i}_shift")
            # A ones' complement element (``_products``) multiplies the magnitudes: its significand unflipped,
            # and a zero product positive, so that signed zeros do not toggle the tree (all ones, carry 1).
            ones = path.ones_complement and i > 0
            m.d.comb += [sign.eq((xs ^ ws) & xsig.any() & wsig.any() if ones else xs ^ ws),
                         flipped.eq(xsig if ones else xsig ^ sign.replicate(len(xsig))), shift.eq(wexp + xexp - 2)]
            inputs.append((sign, flipped, wsig, shift))
        return inputs

    @staticmethod
    def _hold_operands(m, load, lane, path, operands, scale, weight_fp8=None,
                       roles=("a_sign", "a_sig", "a_exp", "b_code")):
        """The path's operand registers: loaded only when ``load`` (the lane's pair runs on this path),
        held otherwise, so the path's logic sees no new values in the cycles it is not used. Per element
        the decoded activation element and the weight's code; per lane the scale product and, on a path
        that takes both formats, the weight block's precision bit. The narrow path holds the activation's
        code too (``roles`` a_code, b_code)."""
        held = []
        for i, fields in enumerate(operands):
            registers = []
            for role, value in zip(roles, fields):
                # No reset: a path's result is used only after its operands were loaded. Decoded exponents
                # are >= 1 (numerics §7) and code 0 decodes to exponent 1, so from power-up a path holds a
                # valid zero operand and its product alignment does not move when the path first runs.
                register = Signal(len(value), name=f"{path.prefix}op{lane}_{i}_{role}", init=role.endswith("exp"),
                                  reset_less=True)
                with m.If(load):
                    m.d.sync += register.eq(value)
                registers.append(register)
            held.append(tuple(registers))
        def hold(role, value, init=0):
            register = Signal(len(value), name=f"{path.prefix}op{lane}_{role}", init=init, reset_less=True)
            with m.If(load):
                m.d.sync += register.eq(value)
            return register

        held_scale = (hold("ssig", scale[0]), hold("sshift", scale[1]))
        # The precision bit starts at FP8, so that code 0 decodes to exponent 1 as above.
        held_fp8 = None if weight_fp8 is None else hold("b_fp8", weight_fp8, init=1)
        return held, held_scale, held_fp8

    def _decode(self, m, stage, valid):
        """Stage 0: the activation block decoded once, each lane's weight block (on the split datapath only
        its NaN test: the codes are decoded after the operand registers), scale product, NaN flag and the
        path its pair runs on. The ``activation_decode`` cut, where the depth places it, sits between the
        decoders and everything the lanes make from their outputs (the scale products here, the multiplier
        inputs or the split datapath's operand registers after); returns the (valid, decoded) after it."""
        payload = self.i.payload
        activation_fp8 = self._fp8_bit(payload.activation)
        split = self._datapath != "shared"
        cut = "activation_decode" in self.cuts

        def named(value, name):
            # What crosses the cut gets a name, so that its register carries one too (not stage_wire<k>).
            if not cut or isinstance(value, Signal):
                return value
            signal = Signal.like(value, name=name)
            m.d.comb += signal.eq(value)
            return signal

        x_decoded = [self._decode_element(m, f"x{i}", payload.activation.codes[i], activation_fp8, narrow=split)
                     for i in range(self._block_size)]
        x_elements = [{fmt: tuple(named(value, f"x{i}_{fmt.name.lower()}_{role}")
                                  for value, role in zip(form, ("sign", "sig", "exp") if len(form) == 3 else ("code",)))
                       for fmt, form in forms.items()} for i, (forms, _) in enumerate(x_decoded)]
        x_scale = self._decode_scale(m, "x_scale", payload.activation.scale)
        # NaN flags per element, reduced after the decode cut (_nan_flags): an OR over every element of
        # both blocks was the decode stage's longest path.
        x_nan = Signal(self._block_size + 1, name="x_nan")
        m.d.comb += x_nan.eq(Cat(*(nan for _, nan in x_decoded), x_scale.nan))
        x_scale = (named(x_scale.significand, "x_scale_sig"), named(x_scale.exponent, "x_scale_exp"))

        def scale_product(lane, state, x_scale):
            w_significand, w_exponent = state.pop("w_scale")
            scale_significand = Signal(_SCALE_SIGNIFICAND_BITS, name=f"s{lane}_sig")
            scale_shift = Signal(range(_SCALE_SHIFT_RANGE), name=f"s{lane}_shift")
            nan = Signal(self._block_size + 1, name=f"w{lane}_nan")
            m.d.comb += [scale_significand.eq(w_significand * x_scale[0]),
                         scale_shift.eq(w_exponent + x_scale[1] - 2),
                         nan.eq(Cat(*state.pop("w_nan")))]
            state.update(scale=(scale_significand, scale_shift), nan=nan)

        lanes = []
        for lane in range(self._lanes):
            weights = payload.weights[lane]
            weight_fp8 = self._fp8_bit(weights)
            if split:
                # The split datapath holds the weight codes themselves and decodes them after its held
                # registers, so an idle path's weight decoders stay still too; only the NaN test is here.
                w_nan = [weight_fp8 & weights.codes[i][:E4M3.magnitude_bits].all() for i in range(self._block_size)]
                w_operands = {"codes": [named(weights.codes[i], f"w{lane}_{i}_code") for i in range(self._block_size)],
                              "fp8": named(weight_fp8, f"w{lane}_fp8")}
            else:
                w_decoded = [self._decode_element(m, f"w{lane}_{i}", weights.codes[i], weight_fp8)
                             for i in range(self._block_size)]
                w_nan = [n for _, n in w_decoded]
                w_operands = [forms for forms, _ in w_decoded]
            w_scale = self._decode_scale(m, f"w{lane}_scale", weights.scale)
            state = {"w": w_operands, "w_scale": (named(w_scale.significand, f"w{lane}_scale_sig"),
                                                  named(w_scale.exponent, f"w{lane}_scale_exp"))}
            if cut:
                w_nan_flags = Signal(self._block_size + 1, name=f"w{lane}_nan_flags")
                m.d.comb += w_nan_flags.eq(Cat(*w_nan, w_scale.nan))
                state["w_nan"] = (w_nan_flags,)
            else:
                # Made here without the cut, in the order (and so the Verilog) of the depths before it.
                state["w_nan"] = (*w_nan, w_scale.nan)
                scale_product(lane, state, x_scale)
            # One select per path after the widest (the FP4 x FP4 one); none set: the widest path.
            selects = []
            if self._datapath != "shared":
                narrow = Signal(name=f"sel{lane}_fp4")
                m.d.comb += narrow.eq(~activation_fp8 & ~weight_fp8)
                selects.append(narrow)
            lanes.append({**state, "selects": selects})
        decoded = {"x": x_elements, "x_nan": x_nan, "lanes": lanes, "first": named(payload.first, "first"),
                   "last": named(payload.last, "last")}
        if cut:
            # The decoded activation elements and scale go to every lane: registered here, the nets that
            # broadcast them start at flip-flops instead of at the activation's decode selects (whose
            # precision bit fans out to all B elements). The shared datapath's weights cross decoded too,
            # a bit wider than their codes, so that the scale products and each lane's multiplier inputs
            # (the alignment-shift adder among them) have the next stage to themselves.
            valid, (decoded, x_scale) = stage("activation_decode", valid, (decoded, x_scale))
            for lane, state in enumerate(decoded["lanes"]):
                scale_product(lane, state, x_scale)
        return valid, decoded

    @staticmethod
    def _control(decoded):
        """What travels beside the data from the decode stage: per lane its NaN flags and path selects,
        the activation's NaN flags and the reduction markers."""
        return {"lanes": [{"nan": s["nan"], "selects": s["selects"]} for s in decoded["lanes"]],
                "x_nan": decoded["x_nan"], "first": decoded["first"], "last": decoded["last"]}

    @staticmethod
    def _nan_flags(m, control):
        """``control`` with each lane's NaN flags and the activation's reduced to one flag per lane."""
        x_nan = Signal(name="x_nan_any")
        m.d.comb += x_nan.eq(control["x_nan"].any())
        lanes = []
        for lane, state in enumerate(control["lanes"]):
            nan = Signal(name=f"n{lane}")
            m.d.comb += nan.eq(x_nan | state["nan"].any())
            lanes.append({**state, "nan": nan})
        return {"lanes": lanes, "first": control["first"], "last": control["last"]}

    def _split_operands(self, m, enable, valid, decoded):
        """The split datapath's operand registers, which also make the decode cut: a path loads only in
        the cycles it runs a pair, and decodes its held weight codes after them (the widest path both
        formats, E2M1 promoted, the narrow one E2M1); the control travels in an ordinary pipeline
        register beside them. After the ``activation_decode`` cut they load from its registers, so
        the activation's broadcast to every lane's registers starts at a flip-flop too."""
        lanes = []
        for lane, state in enumerate(decoded["lanes"]):
            loads = [~Cat(*state["selects"]).any(), *state["selects"]]
            by_path = {}
            for path, load in zip(self._paths, loads):
                wide = path is self._paths[0]
                code_bits = E4M3.code_bits if wide else E2M1.code_bits
                operands = [x_forms[path.a] + (code[:code_bits],) for x_forms, code in zip(decoded["x"], state["w"]["codes"])]
                held, scale, fp8 = self._hold_operands(m, enable & valid & load, lane, path, operands, state["scale"],
                                                       state["w"]["fp8"] if wide else None,
                                                       **({} if wide else {"roles": ("a_code", "b_code")}))
                elements = []
                for i, (*x_element, code) in enumerate(held):
                    if wide:
                        forms, _ = self._decode_element(m, f"w{lane}_{i}", code, fp8)
                        elements.append(tuple(x_element) + forms[path.b])
                    else:
                        # Both codes decoded after the registers: an idle path's decoders hold still.
                        element = ()
                        for role, operand in (("x", x_element[0]), ("w", code)):
                            m.submodules[f"n{role}{lane}_{i}_e2m1"] = e2m1 = Decoder(format=E2M1)
                            m.d.comb += e2m1.code.eq(operand)
                            element += (e2m1.decoded.sign, e2m1.decoded.significand, e2m1.decoded.exponent)
                        elements.append(element)
                by_path[path.prefix] = (self._multiplier_inputs(m, lane, path, elements), scale)
            lanes.append(by_path)
        return lanes, self._control(decoded)

    def _products(self, m, stage, valid, lanes, control):
        """Element products of every lane and path: signed significand product, then the alignment shift.
        A ones' complement path (the split datapath's FP4xFP4 one) multiplies magnitudes instead and
        applies each sign after the shift as an XOR, handing the tree the signs to add back (the
        first element stays two's complement: B elements, B - 1 adders)."""
        multiplied = []
        for lane, by_path in enumerate(lanes):
            per_path = {}
            for path in self._paths:
                operands, scale = by_path[path.prefix]
                elements = []
                for i, (sign, flipped, wsig, shift) in enumerate(operands):
                    if path.ones_complement and i > 0:
                        # The magnitudes' product; its sign is applied after the alignment shift (below).
                        significand = Signal(len(wsig) + len(flipped), name=f"{path.prefix}m{lane}_{i}")
                        m.d.comb += significand.eq(flipped * wsig)
                        elements.append((significand, shift, sign))
                        continue
                    # Signed before the alignment shift, and without a negation: with the activation
                    # significand's bits flipped, (sign, flipped) is -x - 1 in two's complement, and
                    # -(x * w) = (-x - 1) * w + w, so the product and the correction are one multiply-add.
                    significand = Signal(signed(len(wsig) + len(flipped) + 1), name=f"{path.prefix}m{lane}_{i}")
                    m.d.comb += significand.eq(Cat(flipped, sign).as_signed() * wsig + Mux(sign, wsig, 0))
                    elements.append((significand, shift))
                per_path[path.prefix] = (elements, scale)
            multiplied.append(per_path)
        valid, (multiplied, control) = stage("element_multiply", valid, (multiplied, control))
        aligned = []
        for lane, per_path in enumerate(multiplied):
            by_path = {}
            for path in self._paths:
                elements, scale = per_path[path.prefix]
                products, carries = [], []
                for i, (significand, shift, *sign) in enumerate(elements):
                    if sign:
                        # The magnitude, its sign beside it: the tree applies the sign (``_tree``). Through the
                        # ``products`` cut that is as many flip-flops as the signed product would take.
                        product = Signal(path.product_bits, name=f"{path.prefix}p{lane}_{i}")
                        carries.append(sign[0])
                    else:
                        product = Signal(signed(path.product_bits + 1), name=f"{path.prefix}p{lane}_{i}")
                    m.d.comb += product.eq(significand << shift)
                    products.append(product)
                by_path[path.prefix] = (products, scale, carries)
            aligned.append(by_path)
        return valid, aligned, control

    def _tree(self, m, stage, valid, lanes, control):
        """Balanced adder trees, log2(B) levels, per lane and path; the ``tree_mid`` cut halves them. On a
        ones' complement path each adder takes one element's sign as its carry-in (the +1 that makes
        that element's -|p| - 1 the two's complement -|p|)."""
        levels = _ceil_log2(self._block_size)
        # A ones' complement path's elements after the first are magnitudes with their signs (``_products``):
        # each magnitude XOR its sign, -|p| - 1 when negative, and the sign the carry-in of one adder.
        values = [{prefix: products[:len(products) - len(signs)]
                   + [(Cat(magnitude, 0) ^ sign.replicate(len(magnitude) + 1)).as_signed()
                      for magnitude, sign in zip(products[len(products) - len(signs):], signs)]
                   for prefix, (products, _, signs) in by_path.items()} for by_path in lanes]
        carries = [{prefix: list(signs) for prefix, (_, _, signs) in by_path.items()} for by_path in lanes]
        middle = levels // 2

        def cut_middle(valid, values, lanes, control):
            nonlocal carries
            scales = [{prefix: scale for prefix, (_, scale, *_) in by_path.items()} for by_path in lanes]
            valid, (values, scales, control, carries) = stage("tree_mid", valid, (values, scales, control, carries))
            return valid, values, [{prefix: (None, scale) for prefix, scale in by_path.items()} for by_path in scales], control

        for level in range(levels):
            if level == middle:
                valid, values, lanes, control = cut_middle(valid, values, lanes, control)
            for lane, by_path in enumerate(values):
                for path in self._paths:
                    width = path.block_sum_bits(self._block_size) + 1
                    terms = by_path[path.prefix]
                    pending = carries[lane][path.prefix]
                    paired = []
                    for k in range(0, len(terms) - 1, 2):
                        total = Signal(signed(width), name=f"{path.prefix}t{lane}_l{level}_{k // 2}")
                        if pending:
                            m.d.comb += total.eq(terms[k] + terms[k + 1] + pending.pop(0))
                        else:
                            m.d.comb += total.eq(terms[k] + terms[k + 1])
                        paired.append(total)
                    if len(terms) % 2:
                        paired.append(terms[-1])
                    by_path[path.prefix] = paired
        if middle == levels:  # B = 1: no adder, the cut still takes its cycle
            valid, values, lanes, control = cut_middle(valid, values, lanes, control)
        assert not any(signs for by_path in carries for signs in by_path.values())
        return valid, [{prefix: (sums[0], lanes[lane][prefix][1]) for prefix, sums in by_path.items()}
                       for lane, by_path in enumerate(values)], control

    def _terms(self, m, stage, valid, lanes, control):
        """Block terms, block sum x scale significand product << scale shift, per lane and path. The
        8-bit significand product is written out as shift-and-add: each 2-bit quarter of the significand
        selects two shifted copies of the block sum, and their sum is one carry chain with one logic
        level in front (a ``*`` here became a multiplier three LUT levels deep before its carry chain
        on the ECP5). The ``term_multiply`` cut sits after the quarters, ``term_sum`` after their sum
        and before the shift. The sum is two levels of adders, (q0 + q1·4) and (q2 + q3·4), then the
        pair sums added; ``term_pairs`` registers the pair sums, so that stage has one carry chain
        instead of two in series."""
        quarter_bits = 2
        quarters = []
        for lane, by_path in enumerate(lanes):
            per_path = {}
            for path in self._paths:
                total, (significand, shift) = by_path[path.prefix]
                parts = []
                for k in range(_SCALE_SIGNIFICAND_BITS // quarter_bits):
                    low, high = significand[quarter_bits * k], significand[quarter_bits * k + 1]
                    part = Signal(signed(len(total) + quarter_bits), name=f"{path.prefix}sp{lane}_{k}")
                    m.d.comb += part.eq(Mux(low, total, 0) + (Mux(high, total, 0) << 1))
                    parts.append(part)
                per_path[path.prefix] = (parts, shift)
            quarters.append(per_path)
        valid, (quarters, control) = stage("term_multiply", valid, (quarters, control))
        pairs = []
        for lane, per_path in enumerate(quarters):
            by_path = {}
            for path in self._paths:
                (q0, q1, q2, q3), shift = per_path[path.prefix]
                sums = (q0 + (q1 << quarter_bits), q2 + (q3 << quarter_bits))
                if "term_pairs" in self.cuts:  # named, so that their registers carry the name too
                    named = []
                    for k, value in enumerate(sums):
                        pair = Signal(value.shape(), name=f"{path.prefix}sp{lane}_pair{k}")
                        m.d.comb += pair.eq(value)
                        named.append(pair)
                    sums = tuple(named)
                # Without the cut the pair sums stay expressions, so the product is the same
                # expression (and the same Verilog) as before the cut existed.
                by_path[path.prefix] = (sums, shift)
            pairs.append(by_path)
        valid, (pairs, control) = stage("term_pairs", valid, (pairs, control))
        products = []
        for lane, per_path in enumerate(pairs):
            by_path = {}
            for path in self._paths:
                (low, high), shift = per_path[path.prefix]
                # The block sum's register width + the significand's bits (a quarter's + 3 · quarter_bits).
                width = path.block_sum_bits(self._block_size) + 1 + _SCALE_SIGNIFICAND_BITS
                product = Signal(signed(width), name=f"{path.prefix}sp{lane}")
                m.d.comb += product.eq(low + (high << 2 * quarter_bits))
                by_path[path.prefix] = (product, shift)
            products.append(by_path)
        valid, (products, control) = stage("term_sum", valid, (products, control))
        terms = []
        for lane, by_path in enumerate(products):
            per_path = {}
            for path in self._paths:
                product, shift = by_path[path.prefix]
                term = Signal(signed(path.term_bits(self._block_size)), name=f"{path.prefix}term{lane}")
                m.d.comb += term.eq(product << shift)
                per_path[path.prefix] = term
            terms.append(per_path)
        return valid, terms, control

    def _accumulate(self, m, stage, enable, valid, in_reduction, state):
        """The exact accumulators, each a low and a high half: the ``accumulate`` cut registers the carry
        between them, so no carry chain is longer than about half the accumulator. A reduction's sum
        moves to the final register on its last block. A block after a ``last`` starts a new reduction
        even without ``first``, so a missing marker cannot fold one reduction into the next."""
        width = self.accumulator_width
        low_bits = width // 2
        start = Signal()
        m.d.comb += start.eq(state["start"] if "start" in state else state["first"] | ~in_reduction)
        count = Signal(range(self._max_blocks + 2))
        count_next = Signal.like(count)
        m.d.comb += count_next.eq(Mux(start, 1, Mux(count > self._max_blocks, count, count + 1)))
        with m.If(enable & valid):
            m.d.sync += [count.eq(count_next), in_reduction.eq(~state["last"])]

        halves = []
        low_registers = []
        for lane, (terms, control) in enumerate(zip(state["terms"], state["lanes"])):
            # The pair's path, its term moved up to the accumulator's LSB and sign-extended to its width.
            chosen = terms[self._paths[0].prefix]
            for path, select in zip(self._paths[1:], control["selects"]):
                chosen = Mux(select, terms[path.prefix] << (path.lsb_exponent - self._paths[0].lsb_exponent), chosen)
            term = Signal(signed(width), name=f"acc{lane}_term")
            m.d.comb += term.eq(chosen)
            low = Signal(low_bits, name=f"acc{lane}_lo")
            low_sum = Signal(low_bits + 1, name=f"acc{lane}_lo_next")
            accumulator_nan = Signal(name=f"acc{lane}_nan")
            summed_nan = Signal(name=f"acc{lane}_next_nan")
            m.d.comb += [low_sum.eq(Mux(start, 0, low) + term.as_unsigned()[:low_bits]),
                         summed_nan.eq(Mux(start, 0, accumulator_nan) | control["nan"])]
            with m.If(enable & valid):
                m.d.sync += [low.eq(low_sum[:low_bits]), accumulator_nan.eq(summed_nan)]
            high_term = Signal(signed(width - low_bits), name=f"acc{lane}_hi_term")
            m.d.comb += high_term.eq(term[low_bits:])
            low_registers.append(low)
            halves.append({"low": low_sum[:low_bits], "carry": low_sum[low_bits], "high": high_term,
                           "nan": summed_nan})
        overflow = Signal()
        m.d.comb += overflow.eq(count_next > self._max_blocks)
        cut = "accumulate" in self.cuts
        valid, carried = stage("accumulate", valid, {"lanes": halves, "start": start, "last": state["last"],
                                                     "overflow": overflow})

        final_valid, final_overflow = Signal(), Signal()
        finals = []
        for lane, half in enumerate(carried["lanes"]):
            high = Signal(signed(width - low_bits), name=f"acc{lane}_hi")
            high_sum = Signal.like(high, name=f"acc{lane}_hi_next")
            # The carry enters below the LSB (1 + carry carries exactly when carry is set), so the high
            # half stays one carry chain instead of two adders in series.
            with_carry = Signal(len(high) + 1, name=f"acc{lane}_hi_carry")
            m.d.comb += [with_carry.eq(Cat(Const(1, 1), Mux(carried["start"], 0, high))
                                       + Cat(half["carry"], half["high"])),
                         high_sum.eq(with_carry[1:])]
            # Registered halves: the low register already holds this block's low sum, and is written
            # with the next block's only on this same edge.
            low = low_registers[lane] if cut else half["low"]
            final = Signal(signed(width), name=f"final{lane}")
            final_nan = Signal(name=f"final{lane}_nan")
            with m.If(enable & valid):
                m.d.sync += high.eq(high_sum)
                with m.If(carried["last"]):
                    m.d.sync += [final.eq(Cat(low, high_sum)), final_nan.eq(half["nan"])]
            finals.append({"sum": final, "nan": final_nan})
        with m.If(enable):
            m.d.sync += final_valid.eq(valid & carried["last"])
            with m.If(valid & carried["last"]):
                m.d.sync += final_overflow.eq(carried["overflow"])
        return final_valid, {"lanes": finals, "overflow": final_overflow}

    def _to_fp32(self, m, stage, valid, state):
        """RNE to FP32 of each sum x 2**accumulator_lsb_exponent (numerics §8.2), always normal or zero:
        magnitude, leading-one detection, normalising shift, round decision and increment, with a cut
        possible after each (and inside the first two: ``convert_lod_chunks``, ``convert_shift_coarse``)."""
        width = self.accumulator_width
        padded_width = max(width, 25)  # so guard and sticky always exist
        magnitudes = []
        for lane, final in enumerate(state["lanes"]):
            magnitude = Signal(width, name=f"fp32_{lane}_mag")
            m.d.comb += magnitude.eq(Mux(final["sum"] < 0, -final["sum"], final["sum"]))
            magnitudes.append({"magnitude": magnitude, "negative": final["sum"][-1], "nan": final["nan"]})
        valid, (magnitudes, overflow) = stage("convert_magnitude", valid, (magnitudes, state["overflow"]))

        if "convert_lod_chunks" in self.cuts:
            # The leading one of each aligned 16-bit chunk, registered, then the tree's upper levels: the
            # one-level detector's path from the magnitude register (six LUT levels and the magnitude's
            # long nets on the ECP5) split in two.
            chunked = []
            for lane, lane_state in enumerate(magnitudes):
                chunks = {}
                for offset, (found, position) in leading_one_chunks(lane_state["magnitude"], _LOD_CHUNK):
                    chunk_found = Signal(name=f"fp32_{lane}_lod{offset}_any")
                    chunk_position = Signal(len(position), name=f"fp32_{lane}_lod{offset}_pos")
                    m.d.comb += [chunk_found.eq(found), chunk_position.eq(position)]
                    chunks[offset] = (chunk_found, chunk_position)
                chunked.append({**lane_state, "chunks": chunks})
            valid, (chunked, overflow) = stage("convert_lod_chunks", valid, (chunked, overflow))
        located = []
        for lane, lane_state in enumerate(magnitudes if "convert_lod_chunks" not in self.cuts else chunked):
            nonzero = Signal(name=f"fp32_{lane}_nonzero")
            if "chunks" in lane_state:
                found, position = combine_leading_one(width, lane_state.pop("chunks").items())
                msb = Signal(range(max(width, 2)), name=f"fp32_{lane}_msb")
                m.d.comb += [msb.eq(position), nonzero.eq(found)]
            else:
                msb = leading_one(m, lane_state["magnitude"], f"fp32_{lane}")
                m.d.comb += nonzero.eq(lane_state["magnitude"].any())
            located.append({**lane_state, "msb": msb, "nonzero": nonzero})
        valid, (located, overflow) = stage("convert_lod", valid, (located, overflow))

        coarse_cut = "convert_shift_coarse" in self.cuts
        chunk_bits = _ceil_log2(_LOD_CHUNK)
        normalised = []
        for lane, lane_state in enumerate(located):
            # The leading one to the top bit: the magnitude placed at the top of a double-width word and
            # shifted right by its own MSB position, so the shifter takes that position as it comes from
            # the leading-one detector, with no subtraction in front of it.
            placed = Cat(Const(0, padded_width - 1), lane_state["magnitude"])
            if coarse_cut:
                # In two steps, with a register between: by the leading chunk's offset (the position's
                # bits above the chunk's), then by the position within the chunk, so that neither step
                # has the whole shifter's mux levels. The coarse step keeps the bits the fine one can
                # still move into the aligned word.
                coarse = Signal(padded_width + _LOD_CHUNK - 1, name=f"fp32_{lane}_coarse")
                fine = Signal(chunk_bits, name=f"fp32_{lane}_fine")
                m.d.comb += [coarse.eq(placed >> Cat(Const(0, chunk_bits), lane_state["msb"][chunk_bits:])),
                             fine.eq(lane_state["msb"][:chunk_bits])]
                shift = {"coarse": coarse, "fine": fine}
            else:
                aligned = Signal(padded_width, name=f"fp32_{lane}_aligned")
                m.d.comb += aligned.eq(placed >> lane_state["msb"])
                shift = {"aligned": aligned}
            exponent = Signal(8, name=f"fp32_{lane}_exp")  # before rounding
            m.d.comb += exponent.eq(lane_state["msb"] + (127 + self.accumulator_lsb_exponent))
            normalised.append({**shift, "exponent": exponent, "negative": lane_state["negative"],
                               "nonzero": lane_state["nonzero"], "nan": lane_state["nan"]})
        valid, (normalised, overflow) = stage("convert_shift_coarse", valid, (normalised, overflow))
        if coarse_cut:
            for lane, lane_state in enumerate(normalised):
                aligned = Signal(padded_width, name=f"fp32_{lane}_aligned")
                m.d.comb += aligned.eq(lane_state.pop("coarse") >> lane_state.pop("fine"))
                normalised[lane] = {"aligned": aligned, **lane_state}
        valid, (normalised, overflow) = stage("convert_shift", valid, (normalised, overflow))

        rounding = []
        for lane, lane_state in enumerate(normalised):
            aligned = lane_state["aligned"]
            mantissa = aligned[padded_width - 24 : padded_width - 1]
            guard = aligned[padded_width - 25]
            sticky = aligned[: padded_width - 25].any()
            round_up = Signal(name=f"fp32_{lane}_round_up")
            m.d.comb += round_up.eq(guard & (sticky | mantissa[0]))
            # Exponent and mantissa side by side: rounding up increments both at once, so a carry out of
            # the mantissa moves the value into the next binade with a zero mantissa, as RNE requires.
            unrounded = Signal(31, name=f"fp32_{lane}_unrounded")
            m.d.comb += unrounded.eq(Cat(mantissa, lane_state["exponent"]))
            rounding.append({"unrounded": unrounded, "round_up": round_up, "negative": lane_state["negative"],
                             "nonzero": lane_state["nonzero"], "nan": lane_state["nan"]})
        valid, (rounding, overflow) = stage("convert_round", valid, (rounding, overflow))

        results = []
        for lane, lane_state in enumerate(rounding):
            magnitude = Signal(31, name=f"fp32_{lane}_magnitude_bits")
            m.d.comb += magnitude.eq(lane_state["unrounded"] + lane_state["round_up"])
            bits = Signal(32, name=f"fp32_{lane}_bits")
            m.d.comb += bits.eq(Mux(lane_state["nan"], _CANONICAL_NAN,
                                    Mux(lane_state["nonzero"], Cat(magnitude, lane_state["negative"]), 0)))
            results.append(bits)
        return valid, results, overflow

    def elaborate(self, platform):
        m = Module()
        pipeline = StallPipeline(m, self.i, self.o, credits=self.result_entries, reserves=self.i.payload.last)
        enable = pipeline.enable

        def stage(name, valid, values):
            return pipeline.stage(valid, values, name in self.cuts)

        valid, decoded = self._decode(m, stage, pipeline.input_valid)
        if self._datapath != "shared":
            lanes, control = self._split_operands(m, enable, valid, decoded)
            if "decode" in self.cuts:
                valid, control = pipeline.stage(valid, control, True)
                control = self._nan_flags(m, control)
            else:
                # Without the decode cut the operand registers are a register the other units do not
                # have, not a timing cut: the NaN flags are reduced before it (L flip-flops instead of
                # (L + 1)(B + 1)), as the shared unit reduces them in the stage of its decoders.
                control = self._nan_flags(m, control)
                valid, control = pipeline.stage(valid, control, True)
        else:
            wide = self._paths[0]
            lanes = [{wide.prefix: (self._multiplier_inputs(m, lane, wide, self._operands(wide, decoded["x"], state["w"])),
                                    state["scale"])} for lane, state in enumerate(decoded["lanes"])]
            valid, (lanes, control) = stage("decode", valid, (lanes, self._control(decoded)))
            control = self._nan_flags(m, control)

        valid, products, control = self._products(m, stage, valid, lanes, control)
        valid, (products, control) = stage("products", valid, (products, control))
        valid, sums, control = self._tree(m, stage, valid, products, control)
        valid, (sums, control) = stage("tree", valid, (sums, control))
        valid, terms, control = self._terms(m, stage, valid, sums, control)
        in_reduction = Signal()  # the accumulator's: its last block was not a reduction's last
        if "term" in self.cuts:
            # Whether the block starts a reduction, found as it enters the accumulator stage, so that the
            # accumulators' start select comes from a register. On the edge that takes it there, the
            # accumulator stage's own block (if any) is the last one the accumulators absorb before it.
            absorbed_valid, absorbed_last = Signal(), Signal()
            start = Signal(name="start_next")
            m.d.comb += start.eq(control["first"] | ~Mux(absorbed_valid, ~absorbed_last, in_reduction))
            control = {**control, "start": start}
        valid, (terms, control) = stage("term", valid, (terms, control))
        if "term" in self.cuts:
            m.d.comb += [absorbed_valid.eq(valid), absorbed_last.eq(control["last"])]
        valid, finals = self._accumulate(m, stage, enable, valid, in_reduction, {**control, "terms": terms})
        valid, results, overflow = self._to_fp32(m, stage, valid, finals)

        result = Signal(self._out_layout, name="o_result")
        m.d.comb += [result.overflow.eq(overflow)] + [result.results[lane].eq(bits) for lane, bits in enumerate(results)]
        pipeline.emit(valid, result)
        return m
