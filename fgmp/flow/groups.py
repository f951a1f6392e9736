"""Per-submodule breakdown: assign every cell of a flattened coarse netlist to a functional group.

Amaranth emits only the decoders as Verilog submodules; the multipliers, the adder tree and the rest
are expressions in one module. Their wires keep the names given in ``hw/`` (``p0_3``, ``t0_l1_0``,
``sum0``, ``acc0``, ...), so a cell belongs to the group of the first named wire its output reaches.
Yosys ``submod`` then turns each group into a module, and ``stat`` on the hierarchy gives the table.
The rules follow the signal names in ``hw/dot.py`` and ``hw/actq.py``; cells that match none are
counted as "control" (handshake, stall enable, NaN flags), so the groups always add up.
"""

import re
from collections import deque

__all__ = ["GROUP_RULES", "GROUP_ORDER", "CONTROL", "assign_groups", "name_group", "group_attribute", "module_group"]

CONTROL = "control"

_PIPELINE = ("pipeline registers", r"_q$|_v$")
# The widest path keeps the shared datapath's names; the split datapath's FP4xFP4 path prefixes them with
# n, and the operand registers are <prefix>op<lane>_... (hw/dot.py).
_DOT = [
    _PIPELINE,
    ("operand registers", r"^n?op\d+_"),
    ("decoders", r"^n?[xw][\d_]*_(e2m1|e4m3)\.|^[xw][\d_]+_(sign|sig|exp|nan)$|^(x|w\d+)_scale\."),
    ("multipliers", r"^m\d+_\d+$|^p\d+_\d+(_shift|_sign|_xsig)?$"),
    ("adder tree", r"^t\d+_l\d+_\d+$|^sum\d+$"),
    ("scale path", r"^s\d+_(sig|shift)$|^sp\d+(_\d+|_pair\d)?$|^term\d+$"),
    ("FP4×FP4 multipliers", r"^nm\d+_\d+$|^np\d+_\d+(_shift|_sign|_xsig)?$"),
    ("FP4×FP4 adder tree", r"^nt\d+_l\d+_\d+$|^nsum\d+$"),
    ("FP4×FP4 scale path", r"^nsp\d+(_\d+|_pair\d)?$|^nterm\d+$"),
    ("accumulator", r"^acc\d+|^final|^count|^start(_next)?$|^in_reduction$"),
    ("FP32 conversion", r"^fp32_\d+_|^o__payload|^o_result$"),
]
_ACTQ = [
    _PIPELINE,
    ("sensitivity table", r"^table$|^read__|^write__|^row$|^f\d+$|^position$|^in_reduction$|^table_overflow$"),
    ("amax and scales", r"^x\d+_|^amax|^s[48]_(?!dec|term)|^s8_used$|^forced$"),
    ("candidates", r"^q[48]_|^v[48]_|^p[48]_|^d\d+$|^s[48]_dec"),
    ("score terms", r"^dm\d+|^f\d+_dec|^t[me]\d+(_copy\d+)?$|^s8_term_exp"),
    ("threshold decision", r"^tl\d+|^tm\d+_msb|^top\d+|^top_copy|^ta\d+|^tu\d+|^score|^t_|^choose_fp8$|^o__payload|^o_result$"),
    ("counters and registers", r"^fp8_blocks$|^nvfp4_blocks$|^scale_exponent$|^threshold$"),
]
# The engine keeps the dot unit's breakdown and counts the whole activation unit as one group: the
# question there is what the activation unit adds; its own breakdown is in the actq report. A rule's
# third field is a hierarchy prefix the name must carry, removed before the pattern is matched.
_ENGINE = [("activation unit", r".", "quantizer.")] + [(name, pattern, "dot.") for name, pattern in _DOT]
# The tile (hw/tile.py): its parts by hierarchy prefix; the memories by the names hw/tile.py gives them
# (a memory's cells drive its read data); the sequencer, registers and output path are control.
_TILE = [("dot unit", r".", "dot."), ("post-processing", r".", "postproc."), ("activation unit", r".", "quantizer."),
         ("bus bridge", r".", "bridge."), ("memories", r"^(activations|outputs|weights_(low|high)\d+)\b")]
_POSTPROC = [("post-processing", r".")]
# Reference circuits (hw/reference.py): the operation's gates, and the operand and result registers.
_REFERENCE = [("registers", r"^(a_q|b_q|result)$"), ("arithmetic", r"^result_comb$")]
GROUP_RULES = {"dot": _DOT, "actq": _ACTQ, "engine": _ENGINE, "decoder": [("decoder", r".")],
               "reference": _REFERENCE, "tile": _TILE, "postproc": _POSTPROC, "actq_narrow": _ACTQ}
# Datapath order (input to output), for tables and plots; pipeline registers and control last.
GROUP_ORDER = [name for rules in (_ENGINE, _ACTQ, _REFERENCE) for name, *_ in rules if name != _PIPELINE[0]] + [
    _PIPELINE[0], CONTROL]
GROUP_ORDER[-2:-2] = [name for name in dict.fromkeys(name for rules in (_TILE, _POSTPROC) for name, *_ in rules)
                      if name not in GROUP_ORDER]


def group_attribute(group):
    """The ``submod`` attribute of a group's cells; Yosys names the new module ``<top>_<attribute>``."""
    return "g_" + re.sub(r"[^A-Za-z0-9]+", "_", group).strip("_")


def module_group(top, module, groups):
    for group in groups:
        if f"{top}_{group_attribute(group)}" == module:
            return group
    return None


def name_group(name, rules):
    """The group a wire name belongs to, or None."""
    for rule in rules:
        prefix = rule[2] if len(rule) > 2 else ""
        if name.startswith(prefix) and re.search(rule[1], name[len(prefix):]):
            return rule[0]
    return None


def _public(name):
    # Amaranth's anonymous wires ($12, decoded$15) and Yosys' own ($auto$...) name nothing.
    return "$" not in name


def assign_groups(module, rules):
    """{cell name: group} for a flattened Yosys JSON module, following outputs to the first named wire."""
    compiled = [(rule[0], re.compile(rule[1]), rule[2] if len(rule) > 2 else "") for rule in rules]
    names = {}
    for name, net in module["netnames"].items():
        if _public(name):
            for bit in net["bits"]:
                names.setdefault(bit, []).append(name)
    readers = {}
    for cell_name, cell in module["cells"].items():
        for port, bits in cell["connections"].items():
            if cell.get("port_directions", {}).get(port) == "input":
                for bit in bits:
                    readers.setdefault(bit, []).append(cell_name)

    def outputs(cell):
        return [bit for port, bits in cell["connections"].items()
                if cell.get("port_directions", {}).get(port) == "output" for bit in bits if isinstance(bit, int)]

    def match(cell):
        found = [n for bit in outputs(cell) for n in names.get(bit, ())]
        for group, pattern, prefix in compiled:
            if any(n.startswith(prefix) and pattern.search(n[len(prefix):]) for n in found):
                return group
        return CONTROL if found else None

    result = {}
    for cell_name, cell in module["cells"].items():
        if cell["type"] == "$scopeinfo":
            continue
        # Breadth-first through unnamed intermediate wires; a cell feeding nothing named is control.
        queue, seen, group = deque([cell_name]), {cell_name}, None
        while queue and group is None:
            current = queue.popleft()
            group = match(module["cells"][current])
            if group is None:
                for bit in outputs(module["cells"][current]):
                    for reader in readers.get(bit, ()):
                        if reader not in seen:
                            seen.add(reader)
                            queue.append(reader)
        result[cell_name] = group or CONTROL
    return result
