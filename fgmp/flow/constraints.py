"""Constraint files: the FPGA ones under ``constraints/`` (selected per part, frequency set per run) and
the SDC / XDC of a generated top (written per configuration from its Verilog port list)."""

import re
from pathlib import Path

from .harness import HARNESS_PORTS
from .tools import FlowError

__all__ = ["CONSTRAINTS_DIR", "check_frequency", "harness_constraints", "verilog_ports", "unit_constraints",
           "check_sdc", "IO_BUDGET"]

CONSTRAINTS_DIR = Path(__file__).resolve().parents[2] / "constraints"
# Share of the clock period the surrounding system spends before an input / after an output.
IO_BUDGET = 0.2

# Per family: how the file places a port and states the clock frequency (MHz in group "mhz").
_SYNTAX = {
    "lpf": (r'^\s*LOCATE\s+COMP\s+"(?P<port>\w+)"\s+SITE\s+"\w+"\s*;',
            r'^(?P<head>\s*FREQUENCY\s+PORT\s+"clk"\s+)(?P<mhz>[\d.]+)(?P<tail>\s*MHZ\s*;)'),
    "pcf": (r"^\s*set_io\s+(?:-\S+\s+)*(?P<port>\w+)\s+\w+\s*$",
            r"^(?P<head>\s*set_frequency\s+clk\s+)(?P<mhz>[\d.]+)(?P<tail>\s*)$"),
}


def check_frequency(freq_mhz):
    if freq_mhz is None:
        return None
    if not isinstance(freq_mhz, (int, float)) or isinstance(freq_mhz, bool):
        raise TypeError(f"Frequency must be a number of MHz, not {freq_mhz!r}")
    if not 0 < freq_mhz <= 1000:
        raise ValueError(f"Frequency must be above 0 and at most 1000 MHz, not {freq_mhz}")
    return float(freq_mhz)


def harness_constraints(filename, directory, freq_mhz=None):
    """Copy ``constraints/<filename>`` into ``directory`` with the clock frequency set to ``freq_mhz``
    (default: the file's own); returns (path, frequency in MHz). Raises FlowError if the file does not
    place every harness port or does not state the clock frequency exactly once."""
    source = CONSTRAINTS_DIR / filename
    if not source.is_file():
        raise FlowError(f"Constraint file {source} is missing")
    place, frequency = (re.compile(p, re.M) for p in _SYNTAX[source.suffix.lstrip(".")])
    text = source.read_text()
    body = "\n".join(line.split("#")[0] for line in text.splitlines())
    placed = {m.group("port") for m in place.finditer(body)}
    missing = [p for p in ("clk", "rst", *HARNESS_PORTS) if p not in placed]
    if missing:
        raise FlowError(f"{source} does not place port(s) {', '.join(missing)}")
    found = list(frequency.finditer(body))
    if len(found) != 1:
        raise FlowError(f"{source} must state the clock frequency exactly once, found {len(found)}")
    mhz = check_frequency(freq_mhz) or float(found[0].group("mhz"))
    text = frequency.sub(lambda m: f"{m.group('head')}{mhz:g}{m.group('tail')}", text)
    target = Path(directory) / source.name
    target.write_text(text)
    return target, mhz


def verilog_ports(verilog, top):
    """{port: (direction, width)} of module ``top`` in Amaranth-generated Verilog."""
    text = Path(verilog).read_text()
    start = re.search(rf"^module \\?{re.escape(top)}\s*\(", text, re.M)
    if start is None:
        raise FlowError(f"No module {top} in {verilog}")
    body = text[start.end():text.index("endmodule", start.end())]
    return {m.group(3): (m.group(1), int(m.group(2) or 0) + 1)
            for m in re.finditer(r"^\s*(input|output)\s+(?:\[(\d+):0\]\s+)?(\w+)\s*;", body, re.M)}


def _port_list(ports, direction):
    names = [f"{n}[*]" if w > 1 else n for n, (d, w) in sorted(ports.items()) if d == direction and n != "clk"]
    return "{" + " ".join(names) + "}"


def unit_constraints(ports, top, freq_mhz, flavour):
    """SDC (``flavour`` 'sdc', ASIC flows) or XDC ('xdc', Vivado out-of-context) text for a generated
    top with ``ports`` (from ``verilog_ports``) clocked at ``freq_mhz``."""
    if "clk" not in ports:
        raise FlowError(f"{top} has no clk port: a combinational unit needs no clock constraint")
    period = 1000.0 / check_frequency(freq_mhz)
    delay = IO_BUDGET * period
    where = ("ASIC flows (OpenSTA / OpenROAD, Design Compiler, Genus)" if flavour == "sdc" else
             "Vivado, out-of-context synthesis of the unit (synth_design -mode out_of_context)")
    lines = [
        f"# {top}: clock and I/O timing for {where}.",
        f"# Written by `fgmp constraints` for {freq_mhz:g} MHz (constraints/README.md); the ports are the Verilog's.",
        f"# Every port faces a register of the surrounding system, which keeps {IO_BUDGET:.0%} of the period",
        "# on its side of the port; the unit gets the rest. rst is synchronous, so it is timed like data.",
        f"create_clock -name clk -period {period:.3f} [get_ports clk]",
        f"set_input_delay -clock clk {delay:.3f} [get_ports {_port_list(ports, 'input')}]",
        f"set_output_delay -clock clk {delay:.3f} [get_ports {_port_list(ports, 'output')}]",
    ]
    if flavour == "xdc":
        lines.insert(4, "# Out of context there are no pins: the clock net is ideal until the unit is placed in a top.")
    return "\n".join(lines) + "\n"


_COMMAND = re.compile(r"^(create_clock|set_input_delay|set_output_delay)\s+(.*)$")


def check_sdc(text, ports):
    """Check SDC/XDC text against a port list: only the commands written above, balanced brackets,
    every named port exists, one clock on port clk, every other port delayed exactly once. Returns
    {'clock': name, 'period': ns}; raises FlowError naming the first problem."""
    clock, period, delayed = None, None, {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        where = f"line {number}"
        if line.count("[") != line.count("]") or line.count("{") != line.count("}"):
            raise FlowError(f"{where}: unbalanced brackets")
        command = _COMMAND.match(line)
        if command is None:
            raise FlowError(f"{where}: unexpected command {line.split()[0]!r}")
        targets = re.search(r"\[get_ports\s+(?:\{([^}]*)\}|([^\s\]]+))\]", line)
        if targets is None:
            raise FlowError(f"{where}: no [get_ports ...]")
        names = [re.sub(r"\[\*\]$", "", n) for n in (targets.group(1) or targets.group(2)).split()]
        for name in names:
            if name not in ports:
                raise FlowError(f"{where}: no port {name!r} in the generated top")
        if command.group(1) == "create_clock":
            found = re.search(r"-name\s+(\w+)\s+-period\s+([\d.]+)", line)
            if found is None or names != ["clk"] or clock is not None:
                raise FlowError(f"{where}: expected one `create_clock -name NAME -period NS [get_ports clk]`")
            clock, period = found.group(1), float(found.group(2))
        else:
            found = re.search(r"-clock\s+(\w+)\s+([\d.]+)", line)
            if found is None or found.group(1) != clock:
                raise FlowError(f"{where}: delay must name the clock defined before it")
            for name in names:
                if name in delayed:
                    raise FlowError(f"{where}: port {name} is constrained twice")
                delayed[name] = command.group(1)
    if clock is None:
        raise FlowError("no create_clock")
    missing = [p for p in ports if p != "clk" and p not in delayed]
    if missing:
        raise FlowError(f"ports without I/O delay: {', '.join(sorted(missing))}")
    wrong = [p for p, c in delayed.items() if (ports[p][0] == "input") != (c == "set_input_delay")]
    if wrong:
        raise FlowError(f"ports delayed in the wrong direction: {', '.join(sorted(wrong))}")
    return {"clock": clock, "period": period}
