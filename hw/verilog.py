"""Verilog emission and Verilator lint for the generated units."""

import subprocess
from pathlib import Path

from amaranth.back import verilog

from fgmp.toolchain import verilator_env

__all__ = ["to_verilog", "write_verilog", "lint", "LintError", "WAIVERS"]

WAIVERS = Path(__file__).with_name("verilator_waivers.vlt")


class LintError(RuntimeError):
    pass


def to_verilog(component, name):
    # No source locations: the output must not change with the checkout path.
    return verilog.convert(component, name=name, emit_src=False)


def write_verilog(component, name, directory):
    """Write ``<name>.v`` (file named after its module, as lint expects) and return its path."""
    path = Path(directory) / f"{name}.v"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_verilog(component, name))
    return path


def lint(path, top):
    """``verilator --lint-only -Wall`` with the documented waivers; raises LintError on any warning."""
    cmd = ["verilator", "--lint-only", "-Wall", str(WAIVERS), str(path), "--top-module", top]
    result = subprocess.run(cmd, env=verilator_env(), capture_output=True, text=True)
    if result.returncode != 0:
        raise LintError(f"Verilator lint failed for {path}:\n{result.stdout}{result.stderr}")
    return result.stdout + result.stderr
