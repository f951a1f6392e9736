"""Verilog emission and Verilator lint for the generated units."""

import os
import subprocess
import threading
from pathlib import Path

from amaranth.back import verilog

from fgmp.toolchain import verilator_env

__all__ = ["to_verilog", "write_verilog", "lint", "LintError", "WAIVERS"]

WAIVERS = Path(__file__).with_name("verilator_waivers.vlt")


# Elaboration and the in-process Yosys that Amaranth converts with keep module-level state; steps that
# run side by side (fgmp.jobs) convert one unit at a time.
_CONVERT = threading.Lock()
_CONVERTED = {}  # (unit type, generator parameters, module name) -> Verilog, for write_verilog's ``params``


class LintError(RuntimeError):
    pass


def to_verilog(component, name):
    with _CONVERT:
        # No source locations: the output must not change with the checkout path.
        return verilog.convert(component, name=name, emit_src=False)


def write_verilog(component, name, directory, *, params=None):
    """Write ``<name>.v`` (file named after its module, as lint expects) and return its path. An
    identical file is left as it is and a changed one is replaced whole, so a simulator or Yosys
    reading it meanwhile (fgmp.jobs) never sees it half-written.

    ``params``: the generator parameters ``component`` was made from (a dict). With them, a unit of the
    same type and parameters converted before in this process is not converted again: Amaranth takes
    seconds for the activation unit and the engine, and a demo or test run writes each several times."""
    path = Path(directory) / f"{name}.v"
    path.parent.mkdir(parents=True, exist_ok=True)
    key = None if params is None else (type(component).__qualname__, repr(sorted(params.items())), name)
    with _CONVERT:
        text = _CONVERTED.get(key)
    if text is None:
        text = to_verilog(component, name)
        if key is not None:
            with _CONVERT:
                _CONVERTED[key] = text
    else:
        component._MustUse__silence = True  # made, not elaborated: its Verilog is known
    if not path.is_file() or path.read_text() != text:
        partial = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
        partial.write_text(text)
        partial.replace(path)
    return path


def lint(path, top):
    """``verilator --lint-only -Wall`` with the documented waivers; raises LintError on any warning."""
    cmd = ["verilator", "--lint-only", "-Wall", str(WAIVERS), str(path), "--top-module", top]
    result = subprocess.run(cmd, env=verilator_env(), capture_output=True, text=True)
    if result.returncode != 0:
        raise LintError(f"Verilator lint failed for {path}:\n{result.stdout}{result.stderr}")
    return result.stdout + result.stderr
