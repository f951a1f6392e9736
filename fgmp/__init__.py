"""FGMP hardware generator: fine-grained mixed-precision (NVFP4/FP8) RTL and its bit-exact golden model.

Subpackages: ``fgmp.hw`` (Amaranth components), ``fgmp.golden`` (torch golden model), ``fgmp.sim`` (cocotb
benches and runners).
"""

__version__ = "0.1.0"
