"""Reading lib.data struct fields out of the flat vector a Verilog port carries."""

from amaranth.hdl import Shape

__all__ = ["unpack_fields"]


def unpack_fields(word, layout):
    """{field name: int} of ``word`` laid out as ``layout`` (Amaranth packs the first field at bit 0)."""
    fields = {}
    for name, field in layout:
        width = Shape.cast(field.shape).width
        fields[name] = (word >> field.offset) & ((1 << width) - 1)
    return fields
