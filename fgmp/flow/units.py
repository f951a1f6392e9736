"""The units the flow measures, built from a kind and its generator parameters, named as
``fgmp generate`` names them."""

from dataclasses import dataclass

from fgmp.hw import ActivationQuantizer, Decoder, DotUnit, Engine
from fgmp.sim.decoders import DECODER_FORMATS
from fgmp.sim.dot import dot_top

__all__ = ["UNITS", "DOT_VARIANTS", "Unit", "make_unit", "dot_variant"]

# Kind -> the generator parameters it accepts (keyword arguments of its constructor).
UNITS = {
    "dot": ("lanes", "block_size", "max_blocks", "pipeline_stages", "formats", "datapath"),
    "actq": ("block_size", "max_channels", "pipeline_stages"),
    "engine": ("lanes", "block_size", "max_channels", "quantizer_stages", "dot_stages"),
    "decoder": ("format",),
}
# The dot unit's variants as the comparisons name them -> the generator parameters that make them.
DOT_VARIANTS = {
    "FGMP": {"formats": ("nvfp4", "fp8")},
    "FGMP split": {"formats": ("nvfp4", "fp8"), "datapath": "split"},
    "FP8-only": {"formats": ("fp8",)},
    "FP4-only": {"formats": ("nvfp4",)},
}


def dot_variant(unit):
    """The DOT_VARIANTS name of a DotUnit."""
    for name, params in DOT_VARIANTS.items():
        if unit.formats == params["formats"] and unit.datapath == params.get("datapath", "shared"):
            return name
    raise ValueError(f"No variant has formats {unit.formats} and datapath {unit.datapath!r}")


@dataclass(frozen=True)
class Unit:
    kind: str
    component: object
    top: str
    params: dict

    @property
    def label(self):
        """Short human name: 'FGMP dot L=4 P=1', 'actq P=1', ..."""
        p = self.params
        if self.kind == "dot":
            return f"{dot_variant(self.component)} dot L={p['lanes']} P={self.component.pipeline_stages}"
        if self.kind == "actq":
            return f"actq C={self.component.max_channels} P={self.component.pipeline_stages}"
        if self.kind == "engine":
            q, d = self.pipeline_stages
            return f"engine L={p['lanes']} C={self.component.max_channels} Q={q} P={d}"
        return self.top

    @property
    def slug(self):
        """A directory name unique to the configuration (defaults included)."""
        c = self.component
        if self.kind == "dot":
            return f"{self.top}_b{c.block_size}_n{c.max_blocks}_p{c.pipeline_stages}"
        if self.kind == "actq":
            return f"{self.top}_b{c.block_size}_c{c.max_channels}_p{c.pipeline_stages}"
        if self.kind == "engine":
            q, p = self.pipeline_stages
            return f"{self.top}_b{c.block_size}_c{c.max_channels}_q{q}_p{p}"
        return self.top

    @property
    def latency(self):
        """Cycles from a reduction's last input to its result (the unit's own figure); None for a decoder."""
        return getattr(self.component, "latency", None)

    @property
    def macs_per_cycle(self):
        """Multiply-accumulates per cycle at II = 1 (lanes x block size); None for units that do none."""
        if self.kind in ("dot", "engine"):
            return self.component.lanes * self.component.block_size
        return None

    @property
    def pipeline_stages(self):
        if self.kind == "engine":
            return (self.params.get("quantizer_stages", 1), self.params.get("dot_stages", 1))
        return getattr(self.component, "pipeline_stages", None)


def make_unit(kind, **params):
    """Build the component of unit ``kind`` with ``params``; the generators validate their own values."""
    if not isinstance(kind, str):
        raise TypeError(f"Unit must be a unit name, not {kind!r}")
    if kind not in UNITS:
        raise ValueError(f"Unknown unit {kind!r}; choose from {', '.join(UNITS)}")
    for name in params:
        if name not in UNITS[kind]:
            raise ValueError(f"Unit {kind!r} has no parameter {name!r}; it takes {', '.join(UNITS[kind])}")
    if kind == "dot":
        if "formats" in params and isinstance(params["formats"], list):
            params["formats"] = tuple(params["formats"])
        component = DotUnit(**{"lanes": 4, **params})
        return Unit(kind, component, dot_top(component), {"lanes": component.lanes, **params})
    if kind == "actq":
        return Unit(kind, ActivationQuantizer(**params), "fgmp_actq", params)
    if kind == "engine":
        component = Engine(**{"lanes": 4, **params})
        return Unit(kind, component, f"fgmp_engine_l{component.lanes}", {"lanes": component.lanes, **params})
    name = params.get("format", "e4m3")
    if name not in DECODER_FORMATS:
        raise ValueError(f"Unknown decoder format {name!r}; choose from {', '.join(DECODER_FORMATS)}")
    return Unit(kind, Decoder(format=DECODER_FORMATS[name]), f"{name}_decoder", {"format": name})
