"""Amaranth 0.5 components of the FGMP datapath (docs/numerics.md is their contract). Never imports fgmp.golden."""

from .actq import ActivationQuantizer
from .actq_narrow import NarrowActivationQuantizer
from .axil import AXI4LiteBridge, AXI4LiteSignature
from .decoder import Decoder
from .dot import DotUnit
from .engine import Engine
from .formats import E2M1, E4M3, UE4M3, Format
from .postproc import PostProcessor
from .tile import Tile

__all__ = ["ActivationQuantizer", "AXI4LiteBridge", "AXI4LiteSignature", "Decoder", "DotUnit", "Engine", "Format",
           "E2M1", "E4M3", "UE4M3", "NarrowActivationQuantizer", "PostProcessor", "Tile"]
