"""The units the flow measures, built from a kind and its generator parameters, named as
``fgmp generate`` names them."""

from dataclasses import dataclass

from fgmp.hw import ActivationQuantizer, Decoder, DotUnit, Engine
from fgmp.hw.actq_narrow import NarrowActivationQuantizer
from fgmp.hw.postproc import PostProcessor
from fgmp.sim.decoders import DECODER_FORMATS
from fgmp.sim.dot import dot_top

__all__ = ["UNITS", "TILE_UNITS", "DOT_VARIANTS", "Unit", "make_unit", "dot_variant"]

# Kind -> the generator parameters it accepts (keyword arguments of its constructor).
UNITS = {
    "dot": ("lanes", "block_size", "max_blocks", "pipeline_stages", "formats", "datapath", "flow_control"),
    "actq": ("block_size", "max_channels", "pipeline_stages", "flow_control"),
    "engine": ("lanes", "block_size", "max_channels", "quantizer_stages", "dot_stages", "flow_control"),
    "decoder": ("format",),
}
# The FGMP tile (hw/tile.py) and the parts it adds to the dot unit: the post-processing unit and the narrow
# activation unit. Kept apart from UNITS, the streaming units the comparisons and the command line offer.
TILE_UNITS = {
    "tile": ("lanes", "max_inputs", "max_outputs", "max_tokens", "weight_blocks", "fp8_weight_blocks",
             "activation_blocks", "output_memory", "elements_per_cycle", "dot_stages", "datapath",
             "postproc_stages"),
    "postproc": ("width", "pipeline_stages"),
    "actq_narrow": ("block_size", "max_channels", "elements_per_cycle"),
}
_KINDS = {**UNITS, **TILE_UNITS}
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
            return f"actq{self._credit} C={self.component.max_channels} P={self.component.pipeline_stages}"
        if self.kind == "engine":
            q, d = self.pipeline_stages
            return f"engine{self._credit} L={p['lanes']} C={self.component.max_channels} Q={q} P={d}"
        if self.kind == "tile":
            c = self.component
            return f"tile L={c.lanes} K={c.max_inputs} M={c.max_outputs} T={c.max_tokens} E={c.elements_per_cycle}"
        if self.kind == "postproc":
            return f"postproc E={self.component.width} P={self.component.pipeline_stages}"
        if self.kind == "actq_narrow":
            return f"narrow actq C={self.component.max_channels} E={self.component.elements_per_cycle}"
        return self.top

    @property
    def _credit(self):
        """' credit' for an activation unit or engine under credit flow control (the dot unit's top names it)."""
        return " credit" if getattr(self.component, "flow_control", "stall") == "credit" else ""

    @property
    def slug(self):
        """A directory name unique to the configuration (defaults included)."""
        c = self.component
        if self.kind == "dot":
            return f"{self.top}_b{c.block_size}_n{c.max_blocks}_p{c.pipeline_stages}"
        flow = "_credit" if self._credit else ""
        if self.kind == "actq":
            return f"{self.top}_b{c.block_size}_c{c.max_channels}_p{c.pipeline_stages}{flow}"
        if self.kind == "engine":
            q, p = self.pipeline_stages
            return f"{self.top}_b{c.block_size}_c{c.max_channels}_q{q}_p{p}{flow}"
        if self.kind == "tile":
            return (f"{self.top}_k{c.max_inputs}_m{c.max_outputs}_t{c.max_tokens}_w{c.weight_blocks}"
                    f"_h{c.fp8_weight_blocks}_a{c.activation_blocks}_o{int(bool(c.output_words))}"
                    f"_d{c.dot.pipeline_stages}{'' if c.dot.datapath == 'shared' else c.dot.datapath}"
                    f"_p{c.postproc.pipeline_stages}")
        if self.kind == "postproc":
            return f"{self.top}_p{c.pipeline_stages}"
        if self.kind == "actq_narrow":
            return f"{self.top}_b{c.block_size}_c{c.max_channels}"
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
        if self.kind == "tile":
            return self.component.lanes * 16
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
    if kind not in _KINDS:
        raise ValueError(f"Unknown unit {kind!r}; choose from {', '.join(UNITS)}")
    for name in params:
        if name not in _KINDS[kind]:
            raise ValueError(f"Unit {kind!r} has no parameter {name!r}; it takes {', '.join(_KINDS[kind])}")
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
    if kind == "tile":
        from fgmp.hw.tile import Tile  # the tile imports every part: only when one is asked for

        component = Tile(**{"lanes": 4, **params})
        return Unit(kind, component, f"fgmp_tile_l{component.lanes}_e{component.elements_per_cycle}",
                    {"lanes": component.lanes, **params})
    if kind == "postproc":
        component = PostProcessor(**params)
        return Unit(kind, component, f"fgmp_postproc_e{component.width}", params)
    if kind == "actq_narrow":
        component = NarrowActivationQuantizer(**params)
        return Unit(kind, component, f"fgmp_actq_narrow_e{component.elements_per_cycle}", params)
    name = params.get("format", "e4m3")
    if name not in DECODER_FORMATS:
        raise ValueError(f"Unknown decoder format {name!r}; choose from {', '.join(DECODER_FORMATS)}")
    return Unit(kind, Decoder(format=DECODER_FORMATS[name]), f"{name}_decoder", {"format": name})
