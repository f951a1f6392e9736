"""The FGMP tile (docs/numerics.md §10, docs/interfaces.md): a whole Linear layer from on-chip memories on
the L-lane dot unit, its results scaled and rounded to BF16, and quantized by a narrow activation unit
into the next layer's activation blocks, all behind one AXI4-Lite port."""

from dataclasses import dataclass

from amaranth import Cat, Const, Module, Mux, Signal
from amaranth.lib import data, memory, wiring
from amaranth.lib.wiring import In, Out

from .actq import check_parameters as check_actq_parameters
from .actq_narrow import NarrowActivationQuantizer
from .axil import AXI4LiteBridge, AXI4LiteSignature
from .dot import DATAPATHS, MAX_PIPELINE_STAGES as DOT_MAX_STAGES, DotUnit
from .pipeline import check_count, check_pipeline_stages
from .postproc import MAX_PIPELINE_STAGES as POSTPROC_MAX_STAGES, PostProcessor

__all__ = ["Tile", "Region", "REGISTERS", "TILE_ID"]

BLOCK_SIZE = 16
TILE_ID = 0x46474D50  # "FGMP"
# Register word offsets in region 0 (docs/interfaces.md has their fields).
REGISTERS = ("id", "params", "control", "status", "tokens", "output_groups", "input_blocks", "x_base", "y_base",
             "scale", "actq_exponent", "actq_threshold", "flags", "cycles", "fp8_blocks", "nvfp4_blocks")
_REG = {name: index for index, name in enumerate(REGISTERS)}
_LOW_BITS, _HIGH_BITS, _ACT_BITS = 73, 64, 137


@dataclass(frozen=True)
class Region:
    """One window of the bus: ``base`` (byte address), ``depth`` entries of ``width`` bits, each entry at a
    stride of ``words`` 32-bit words (only the first ceil(width / 32) are used). Writes to an entry's
    lower words are staged; the write of its last used word commits the entry. ``writable``/``readable``
    say what the host may do (only while the tile is idle)."""

    name: str
    base: int
    depth: int
    width: int
    words: int
    readable: bool = True
    writable: bool = True

    @property
    def used_words(self):
        return -(-self.width // 32)


def _ceil_log2(n):
    return max(n - 1, 0).bit_length()


def _check_divides(name, value, of_name, of):
    if of % value:
        raise ValueError(f"{name} ({value}) must divide {of_name} ({of})")


class Tile(wiring.Component):
    """An FGMP processing element (numerics §10): weight memories (per lane: 73-bit low words for every
    block, 64-bit high words for the FP8 blocks), an activation memory of 137-bit blocks, an optional
    FP32 output memory, a sequencer that runs T tokens x M outputs x K inputs at one block pair per cycle
    on ``lanes`` lanes (token-major; each token's activation block is read once per output group, each
    weight block once per token), post-processing (x G, BF16) and a narrow activation unit writing the
    next layer's blocks.

    Parameters (keyword-only): ``lanes`` (>= 1); ``max_inputs`` K (a multiple of 16), ``max_outputs`` M (a
    multiple of 16 and of ``lanes``), ``max_tokens`` T, which size the memories by default;
    ``weight_blocks`` per lane (default M/L * K/16); ``fp8_weight_blocks`` per lane, the high memory's
    depth (default: every block); ``activation_blocks`` (default T * (K + M) / 16: one layer's input and
    its next layer's); ``output_memory`` (default True: T * M FP32 words); ``elements_per_cycle`` E of the
    post-processing and activation unit (divides 16 and ``lanes``; default 1); ``dot_stages`` and
    ``datapath`` of the dot unit; ``postproc_stages``.

    Ports: ``bus`` (In AXI4-Lite, 32-bit data; the register map and memory windows are ``regions``),
    ``busy`` and ``done`` (Out, the status bits, for an interrupt).
    """

    def __init__(self, *, lanes=4, max_inputs=256, max_outputs=256, max_tokens=8, weight_blocks=None,
                 fp8_weight_blocks=None, activation_blocks=None, output_memory=True, elements_per_cycle=1,
                 dot_stages=1, datapath="shared", postproc_stages=1):
        check_count("Lanes", lanes, 1)
        check_count("Maximum inputs", max_inputs, BLOCK_SIZE)
        check_count("Maximum outputs", max_outputs, BLOCK_SIZE)
        check_count("Maximum tokens", max_tokens, 1)
        _check_divides("The block size", BLOCK_SIZE, "the maximum inputs", max_inputs)
        _check_divides("The block size", BLOCK_SIZE, "the maximum outputs", max_outputs)
        _check_divides("Lanes", lanes, "the maximum outputs", max_outputs)
        check_count("Elements per cycle", elements_per_cycle, 1)
        _check_divides("Elements per cycle", elements_per_cycle, "the block size", BLOCK_SIZE)
        _check_divides("Elements per cycle", elements_per_cycle, "the lanes", lanes)
        if not isinstance(output_memory, bool):
            raise TypeError(f"Output memory must be True or False, not {output_memory!r}")
        if datapath not in DATAPATHS:
            raise ValueError(f"Unknown datapath {datapath!r}; choose from {', '.join(map(repr, DATAPATHS))}")
        check_pipeline_stages(dot_stages, DOT_MAX_STAGES)
        check_pipeline_stages(postproc_stages, POSTPROC_MAX_STAGES)
        check_actq_parameters(block_size=BLOCK_SIZE, max_channels=max_outputs, pipeline_stages=0)
        input_blocks = max_inputs // BLOCK_SIZE
        if weight_blocks is None:
            weight_blocks = max_outputs // lanes * input_blocks
        check_count("Weight blocks", weight_blocks, 1)
        if fp8_weight_blocks is None:
            fp8_weight_blocks = weight_blocks
        check_count("FP8 weight blocks", fp8_weight_blocks, 1)
        if fp8_weight_blocks > weight_blocks:
            raise ValueError(f"FP8 weight blocks ({fp8_weight_blocks}) must not exceed the weight blocks "
                             f"({weight_blocks})")
        if activation_blocks is None:
            activation_blocks = max_tokens * (max_inputs + max_outputs) // BLOCK_SIZE
        check_count("Activation blocks", activation_blocks, 1)
        self._lanes = lanes
        self._max_inputs, self._max_outputs, self._max_tokens = max_inputs, max_outputs, max_tokens
        self._weight_blocks, self._fp8_weight_blocks = weight_blocks, fp8_weight_blocks
        self._activation_blocks = activation_blocks
        self._output_words = max_tokens * max_outputs if output_memory else 0
        self._elements = elements_per_cycle
        self._dot = DotUnit(lanes=lanes, block_size=BLOCK_SIZE, max_blocks=input_blocks, pipeline_stages=dot_stages,
                            datapath=datapath)
        self._postproc = PostProcessor(width=elements_per_cycle, pipeline_stages=postproc_stages)
        self._quantizer = NarrowActivationQuantizer(block_size=BLOCK_SIZE, max_channels=max_outputs,
                                                    elements_per_cycle=elements_per_cycle)
        self._regions = self._layout_regions()
        last = self._regions[-1]
        self._addr_width = _ceil_log2(last.base + last.depth * last.words * 4)
        super().__init__({
            "bus": In(AXI4LiteSignature(addr_width=self._addr_width)),
            "busy": Out(1),
            "done": Out(1),
        })

    def _layout_regions(self):
        specs = [("registers", len(REGISTERS), 32, True, True),
                 ("table", self._max_outputs // BLOCK_SIZE, 8 * BLOCK_SIZE, False, True),
                 ("activations", self._activation_blocks, _ACT_BITS, True, True)]
        if self._output_words:
            specs.append(("outputs", self._output_words // self._elements, 32 * self._elements, True, False))
        for lane in range(self._lanes):
            specs.append((f"weights_low{lane}", self._weight_blocks, _LOW_BITS, True, True))
            specs.append((f"weights_high{lane}", self._fp8_weight_blocks, _HIGH_BITS, True, True))
        spans = [depth * (1 << _ceil_log2(-(-width // 32))) for _, depth, width, _, _ in specs]
        region_words = 1 << _ceil_log2(max(spans))
        regions = []
        for index, (name, depth, width, readable, writable) in enumerate(specs):
            regions.append(Region(name, index * region_words * 4, depth, width, 1 << _ceil_log2(-(-width // 32)),
                                  readable, writable))
        return regions

    lanes = property(lambda self: self._lanes)
    max_inputs = property(lambda self: self._max_inputs)
    max_outputs = property(lambda self: self._max_outputs)
    max_tokens = property(lambda self: self._max_tokens)
    weight_blocks = property(lambda self: self._weight_blocks)
    fp8_weight_blocks = property(lambda self: self._fp8_weight_blocks)
    activation_blocks = property(lambda self: self._activation_blocks)
    output_words = property(lambda self: self._output_words)
    elements_per_cycle = property(lambda self: self._elements)
    dot = property(lambda self: self._dot)
    postproc = property(lambda self: self._postproc)
    quantizer = property(lambda self: self._quantizer)

    @property
    def regions(self):
        """{name: Region} of the bus windows, in address order."""
        return {region.name: region for region in self._regions}

    @property
    def memory_bits(self):
        """{memory: bits} of the tile's memories as generated."""
        bits = {"weights_low": self._lanes * self._weight_blocks * _LOW_BITS,
                "weights_high": self._lanes * self._fp8_weight_blocks * _HIGH_BITS,
                "activations": self._activation_blocks * _ACT_BITS,
                "table": self._max_outputs * 8}
        if self._output_words:
            bits["outputs"] = self._output_words * 32
        return bits

    def elaborate(self, platform):
        m = Module()
        L, E = self._lanes, self._elements
        m.submodules.bridge = bridge = AXI4LiteBridge(addr_width=self._addr_width)
        wiring.connect(m, wiring.flipped(self.bus), bridge.bus)
        m.submodules.dot = dot = self._dot
        m.submodules.postproc = postproc = self._postproc
        m.submodules.quantizer = quantizer = self._quantizer
        req = bridge.req

        # Memories: one read and one write port each, shared by the host (idle) and the sequencer (busy).
        act_memory = memory.Memory(shape=_ACT_BITS, depth=self._activation_blocks, init=[])
        m.submodules.activations = act_memory
        act_read, act_write = act_memory.read_port(), act_memory.write_port()
        low_ports, high_ports = [], []
        for lane in range(L):
            low = memory.Memory(shape=_LOW_BITS, depth=self._weight_blocks, init=[])
            high = memory.Memory(shape=_HIGH_BITS, depth=self._fp8_weight_blocks, init=[])
            m.submodules[f"weights_low{lane}"], m.submodules[f"weights_high{lane}"] = low, high
            low_ports.append((low.read_port(), low.write_port()))
            high_ports.append((high.read_port(), high.write_port()))
        out_read = out_write = None
        if self._output_words:
            out_memory = memory.Memory(shape=32 * E, depth=self._output_words // E, init=[])
            m.submodules.outputs = out_memory
            out_read, out_write = out_memory.read_port(), out_memory.write_port()

        # Registers.
        regs = {name: Signal(32, name=f"reg_{name}") for name in
                ("tokens", "output_groups", "input_blocks", "x_base", "y_base", "scale", "actq_exponent",
                 "actq_threshold", "flags", "cycles")}
        busy, done, error, overflow = Signal(), Signal(), Signal(), Signal()
        m.d.comb += [self.busy.eq(busy), self.done.eq(done)]
        quantize, write_outputs = regs["flags"][0], regs["flags"][1] if self._output_words else Const(0)

        # Start checks (docs/interfaces.md): the shape fits the memories and the two activation regions
        # do not overlap.
        # Products use the low bits only; the range checks beside them see the whole registers.
        tokens_n = regs["tokens"][:_ceil_log2(self._max_tokens + 1)]
        groups_n = regs["output_groups"][:_ceil_log2(self._max_outputs // L + 1)]
        kb_n = regs["input_blocks"][:_ceil_log2(self._max_inputs // BLOCK_SIZE + 1)]
        tokens, groups, kb = regs["tokens"], regs["output_groups"], regs["input_blocks"]
        outputs = Signal(range(self._max_outputs * 2 + 1))
        out_blocks = Signal(range(self._max_outputs // BLOCK_SIZE * 2 + 1))
        x_end = Signal(64)
        y_end = Signal(64)
        m.d.comb += [outputs.eq(groups_n * L), out_blocks.eq(outputs >> 4),
                     x_end.eq(regs["x_base"] + tokens_n * kb_n), y_end.eq(regs["y_base"] + tokens_n * out_blocks)]
        shape_ok = ((tokens >= 1) & (tokens <= self._max_tokens) & (groups >= 1)
                    & (groups <= self._max_outputs // L) & (kb >= 1) & (kb <= self._max_inputs // BLOCK_SIZE)
                    & (groups_n * kb_n <= self._weight_blocks) & (x_end <= self._activation_blocks))
        next_ok = ~quantize | (((outputs & (BLOCK_SIZE - 1)) == 0) & (y_end <= self._activation_blocks)
                               & ((y_end <= regs["x_base"]) | (x_end <= regs["y_base"])))
        outputs_ok = ~write_outputs | (tokens_n * outputs <= self._output_words)
        can_start = Signal()
        m.d.comb += can_start.eq(shape_ok & next_ok & outputs_ok)

        # The host side of the bus: registers answer at once, memory reads one cycle after their address.
        regions = self._regions
        region_bits = _ceil_log2(regions[1].base // 4)
        region_index = req.addr[region_bits:]
        offset = req.addr[:region_bits]
        max_staged = max(r.used_words for r in regions) - 1
        staging = Signal(data.ArrayLayout(32, max(max_staged, 1)))
        read_pending = Signal()
        start = Signal()
        clear = Signal()
        table_commit = Signal()
        table_row = Signal(range(max(self._max_outputs // BLOCK_SIZE, 2)))
        table_data = Signal(8 * BLOCK_SIZE)
        host_entry = Signal(region_bits)
        memory_rdata = {}
        with m.If(req.valid):
            with m.If((req.wstrb != 0xF) & req.write):
                m.d.comb += [req.ready.eq(1), req.error.eq(1)]  # partial writes are refused, never half-done
            for index, region in enumerate(regions):
                sub_bits = _ceil_log2(region.words)
                entry = offset[sub_bits:]
                sub = offset[:sub_bits] if sub_bits else Const(0, 1)
                with m.Elif(region_index == index):
                    if region.name == "registers":
                        self._register_access(m, req, offset, regs, busy, done, error, overflow, start, clear,
                                              quantizer)
                        continue
                    m.d.comb += host_entry.eq(entry)
                    in_range = (entry < region.depth) & (sub < region.used_words)
                    refused = busy | ~in_range
                    if not region.writable:
                        refused = refused | req.write
                    if not region.readable:
                        refused = refused | ~req.write
                    with m.If(refused):
                        m.d.comb += [req.ready.eq(1), req.error.eq(1)]
                    if region.writable:
                        with m.Elif(req.write):
                            m.d.comb += req.ready.eq(1)
                            with m.If(sub == region.used_words - 1):
                                value = Cat(*(staging[k] for k in range(region.used_words - 1)),
                                            req.wdata)[:region.width]
                                self._commit(m, region.name, entry, value, act_write, low_ports, high_ports,
                                             table_commit, table_row, table_data)
                            for k in range(region.used_words - 1):
                                with m.Elif(sub == k):
                                    m.d.sync += staging[k].eq(req.wdata)
                    if region.readable:
                        with m.Elif(~req.write):
                            m.d.sync += read_pending.eq(~read_pending)
                            m.d.comb += req.ready.eq(read_pending)
                            memory_rdata[index] = sub
            with m.Else():
                m.d.comb += [req.ready.eq(1), req.error.eq(1)]

        # Host reads of the memories: while the tile is idle a memory's read port follows the bus address, and
        # reads only while the host reads that memory: loading the memories does not stir their read data
        # (nor, through it, the dot unit's operands).
        host_reads = {}
        for index, region in enumerate(regions):
            if region.readable and region.name != "registers":
                host_reads[region.name] = Signal(name=f"host_read_{region.name}")
                m.d.comb += host_reads[region.name].eq(req.valid & ~req.write & (region_index == index))
        read_words = {"activations": act_read.data}
        if out_read is not None:
            read_words["outputs"] = out_read.data
        for lane in range(L):
            read_words[f"weights_low{lane}"] = low_ports[lane][0].data
            read_words[f"weights_high{lane}"] = high_ports[lane][0].data
        with m.If(req.valid & ~req.write):
            for index, sub in memory_rdata.items():
                region = regions[index]
                word = Signal(32 * region.used_words, name=f"rd_{region.name}")
                m.d.comb += word.eq(read_words[region.name])
                with m.If(region_index == index):
                    m.d.comb += req.rdata.eq(word.word_select(sub, 32))

        # The actq's configuration: table rows from the host, registers at each start.
        m.d.comb += [quantizer.config.table_write.eq(table_commit), quantizer.config.table_row.eq(table_row),
                     quantizer.config.table_data.eq(table_data),
                     quantizer.config.set_registers.eq(start & can_start),
                     quantizer.config.scale_exponent.eq(regs["actq_exponent"][:8]),
                     quantizer.config.threshold.eq(regs["actq_threshold"]),
                     quantizer.config.clear_counters.eq(clear | (start & can_start))]
        m.d.comb += postproc.scale.eq(regs["scale"])

        self._sequencer(m, dot, busy, start & can_start, regs, act_read, low_ports, high_ports, host_entry, host_reads)
        self._output_path(m, dot, postproc, quantizer, busy, done, start, can_start, error, overflow, regs,
                          quantize, write_outputs, tokens_n, outputs, out_blocks, act_write, out_write, out_read, host_entry,
                          host_reads)
        return m

    def _register_access(self, m, req, offset, regs, busy, done, error, overflow, start, clear, quantizer):
        """Registers answer in the cycle they are addressed. If chains, not a Switch: a case statement
        without a default for some register's next value is an incomplete case to Verilator."""
        m.d.comb += req.ready.eq(1)
        params = (self._lanes | (BLOCK_SIZE << 8) | (self._elements << 16) | ((1 if self._output_words else 0) << 24))
        readable = {"id": Const(TILE_ID, 32), "params": Const(params, 32),
                    "status": Cat(busy, done, error, overflow, quantizer.table_overflow),
                    "fp8_blocks": quantizer.fp8_blocks, "nvfp4_blocks": quantizer.nvfp4_blocks, **regs}
        with m.If(offset >= len(REGISTERS)):
            m.d.comb += req.error.eq(1)
        with m.Elif(req.write):
            with m.If(offset == _REG["control"]):
                with m.If(busy):
                    m.d.comb += req.error.eq(1)
                with m.Else():
                    m.d.comb += [start.eq(req.wdata[0]), clear.eq(req.wdata[1])]
            for name, signal in regs.items():
                if name == "cycles":
                    continue
                with m.Elif(offset == _REG[name]):
                    with m.If(busy):
                        m.d.comb += req.error.eq(1)  # the layer's registers hold still while it runs
                    with m.Else():
                        m.d.sync += signal.eq(req.wdata)
            with m.Else():
                m.d.comb += req.error.eq(1)  # read-only registers
        with m.Else():
            for name, value in readable.items():
                with m.If(offset == _REG[name]):
                    m.d.comb += req.rdata.eq(value)

    def _commit(self, m, name, entry, value, act_write, low_ports, high_ports, table_commit, table_row, table_data):
        if name == "table":
            m.d.comb += [table_commit.eq(1), table_row.eq(entry), table_data.eq(value)]
            return
        if name == "activations":
            port = act_write
        elif name.startswith("weights_low"):
            port = low_ports[int(name[len("weights_low"):])][1]
        else:
            port = high_ports[int(name[len("weights_high"):])][1]
        m.d.comb += [port.en.eq(1), port.addr.eq(entry), port.data.eq(value)]

    def _sequencer(self, m, dot, busy, starting, regs, act_read, low_ports, high_ports, host_entry, host_reads):
        """Issue (token t, output group g, input block k) in that nesting, one per cycle, through two
        memory stages into the dot unit: stage 1 reads each lane's low word and the activation block;
        stage 2 reads an FP8 block's high word at the lane's running FP8 count."""
        L = self._lanes
        # One enable for the issue and both memory stages: they advance unless the dot unit refuses stage 2.
        valid2 = Signal()
        enable = Signal()
        m.d.comb += enable.eq(~valid2 | dot.i.ready)
        issuing = Signal()
        t = Signal(range(self._max_tokens + 1))
        g = Signal(range(self._max_outputs // L + 1))
        k = Signal(range(self._max_inputs // BLOCK_SIZE + 1))
        n = Signal(range(self._weight_blocks + 1))
        x_row = Signal(range(self._activation_blocks + 1))
        last_k = k == regs["input_blocks"] - 1
        last_g = g == regs["output_groups"] - 1
        with m.If(starting):
            m.d.sync += [issuing.eq(1), t.eq(0), g.eq(0), k.eq(0), n.eq(0), x_row.eq(regs["x_base"])]
        with m.Elif(issuing & enable):
            m.d.sync += [k.eq(Mux(last_k, 0, k + 1)), n.eq(n + 1)]
            with m.If(last_k):
                m.d.sync += g.eq(Mux(last_g, 0, g + 1))
                with m.If(last_g):
                    m.d.sync += [t.eq(t + 1), n.eq(0), x_row.eq(x_row + regs["input_blocks"])]
                    with m.If(t == regs["tokens"] - 1):
                        m.d.sync += issuing.eq(0)
        valid1, first1, last1, token1 = Signal(), Signal(), Signal(), Signal()
        first2, last2 = Signal(), Signal()
        with m.If(enable):
            m.d.sync += [valid1.eq(issuing), first1.eq(k == 0), last1.eq(last_k), token1.eq((g == 0) & (k == 0)),
                         valid2.eq(valid1), first2.eq(first1), last2.eq(last1)]
        m.d.comb += [act_read.addr.eq(Mux(busy, x_row + k, host_entry)),
                     act_read.en.eq(Mux(busy, enable, host_reads["activations"]))]
        # The dot unit's operand registers load only with a block pair, so it holds still otherwise.
        act2 = Signal(_ACT_BITS)
        with m.If(enable & valid1):
            m.d.sync += act2.eq(act_read.data)
        m.d.comb += [dot.i.valid.eq(valid2), dot.i.payload.first.eq(first2), dot.i.payload.last.eq(last2),
                     dot.i.payload.activation.eq(act2)]
        for lane in range(L):
            (low_read, _), (high_read, _) = low_ports[lane], high_ports[lane]
            m.d.comb += [low_read.addr.eq(Mux(busy, n, host_entry)),
                         low_read.en.eq(Mux(busy, enable, host_reads[f"weights_low{lane}"]))]
            fp8 = low_read.data[72]
            high_count = Signal(range(self._weight_blocks + 1), name=f"fp8_count{lane}")
            high_addr = Signal.like(high_count, name=f"fp8_addr{lane}")
            m.d.comb += high_addr.eq(Mux(token1, 0, high_count))
            with m.If(enable & valid1):
                m.d.sync += high_count.eq(high_addr + fp8)
            # The high memory reads only for FP8 blocks, so it holds still through NVFP4 ones.
            m.d.comb += [high_read.addr.eq(Mux(busy, high_addr, host_entry)),
                         high_read.en.eq(Mux(busy, enable & valid1 & fp8, host_reads[f"weights_high{lane}"]))]
            low2 = Signal(_LOW_BITS, name=f"low{lane}_q")
            with m.If(enable & valid1):
                m.d.sync += low2.eq(low_read.data)
            weight = dot.i.payload.weights[lane]
            m.d.comb += [weight.scale.eq(low2[64:72]), weight.fp8.eq(low2[72])]
            for i in range(BLOCK_SIZE):
                m.d.comb += weight.codes[i].eq(Cat(low2[4 * i:4 * i + 4], high_read.data[4 * i:4 * i + 4]))

    def _output_path(self, m, dot, postproc, quantizer, busy, done, start, can_start, error, overflow, regs,
                     quantize, write_outputs, tokens_n, outputs, out_blocks, act_write, out_write, out_read,
                     host_entry, host_reads):
        """Dot results (L per reduction) -> E per beat through post-processing -> the output memory and
        the activation unit -> the next layer's blocks in activation memory; the run ends when the last
        of them is written."""
        L, E = self._lanes, self._elements
        beats = L // E
        held = Signal(data.ArrayLayout(32, L))
        held_valid = Signal()
        taking = postproc.i.valid & postproc.i.ready
        if beats > 1:
            beat = Signal(range(beats))
            last_beat = beat == beats - 1
            with m.If(taking):
                m.d.sync += beat.eq(Mux(last_beat, 0, beat + 1))
        else:  # one beat per result: no counter (a zero-width signal is not Verilog)
            last_beat = Const(1)
        m.d.comb += dot.o.ready.eq(~held_valid | (taking & last_beat))
        with m.If(taking & last_beat):
            m.d.sync += held_valid.eq(0)
        with m.If(dot.o.valid & dot.o.ready):
            m.d.sync += [held.eq(dot.o.payload.results), held_valid.eq(1)]
            with m.If(dot.o.payload.overflow):
                m.d.sync += overflow.eq(1)
        m.d.comb += postproc.i.valid.eq(held_valid)
        for e in range(E):
            m.d.comb += postproc.i.payload.values[e].eq(
                Cat(*held).word_select(beat * E + e, 32) if beats > 1 else held[e])

        # Post-processed beats, E consecutive channels of one token each: to the output memory (always
        # ready) and the activation unit, block by block (first/last are read on a block's first beat).
        channel = Signal(range(self._max_outputs + 1))
        out_addr = Signal(range(max(self._output_words // E, 1) + 1))
        beats_left = Signal(range(self._max_tokens * self._max_outputs // E + 1))
        blocks_left = Signal(range(self._max_tokens * self._max_outputs // BLOCK_SIZE + 1))
        y_addr = Signal(range(self._activation_blocks + 1))
        passed = postproc.o.valid & postproc.o.ready
        m.d.comb += [postproc.o.ready.eq(~quantize | quantizer.i.ready),
                     quantizer.i.valid.eq(postproc.o.valid & quantize),
                     quantizer.i.payload.values.eq(postproc.o.payload.bf16),
                     quantizer.i.payload.first.eq(channel == 0),
                     quantizer.i.payload.last.eq(channel >= outputs - BLOCK_SIZE)]
        with m.If(passed):
            m.d.sync += [channel.eq(Mux(channel + E == outputs, 0, channel + E)), beats_left.eq(beats_left - 1),
                         out_addr.eq(out_addr + 1)]
        if out_write is not None:
            m.d.comb += [out_write.en.eq(passed & write_outputs), out_write.addr.eq(out_addr),
                         out_write.data.eq(postproc.o.payload.fp32), out_read.addr.eq(host_entry),
                         out_read.en.eq(host_reads["outputs"])]
        m.d.comb += quantizer.o.ready.eq(1)
        with m.If(busy):
            m.d.comb += [act_write.en.eq(quantizer.o.valid), act_write.addr.eq(y_addr),
                         act_write.data.eq(quantizer.o.payload.block)]
        with m.If(quantizer.o.valid):
            m.d.sync += [y_addr.eq(y_addr + 1), blocks_left.eq(blocks_left - 1)]

        with m.If(busy):
            m.d.sync += regs["cycles"].eq(regs["cycles"] + 1)
            with m.If((beats_left == 0) & (blocks_left == 0)):
                m.d.sync += [busy.eq(0), done.eq(1)]
        with m.If(start):
            with m.If(can_start):
                m.d.sync += [busy.eq(1), done.eq(0), error.eq(0), overflow.eq(0), regs["cycles"].eq(0),
                             channel.eq(0), out_addr.eq(0), y_addr.eq(regs["y_base"]),
                             beats_left.eq((tokens_n * outputs) >> _ceil_log2(E)),
                             blocks_left.eq(Mux(quantize, tokens_n * out_blocks, 0))]
            with m.Else():
                m.d.sync += [error.eq(1), done.eq(0)]
