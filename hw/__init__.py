"""Amaranth 0.5 components of the FGMP datapath (docs/numerics.md is their contract). Never imports fgmp.golden."""

from .decoder import Decoder
from .dot import DotUnit
from .formats import E2M1, E4M3, UE4M3, Format

__all__ = ["Decoder", "DotUnit", "Format", "E2M1", "E4M3", "UE4M3"]
