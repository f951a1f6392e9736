"""Packing and unpacking lib.data values to and from the flat vector a Verilog port carries."""

from amaranth.hdl import Shape
from amaranth.lib import data

__all__ = ["unpack_fields", "pack_value", "unpack_value"]


def unpack_fields(word, layout):
    """{field name: int} of ``word`` laid out as ``layout`` (Amaranth packs the first field at bit 0)."""
    fields = {}
    for name, field in layout:
        width = Shape.cast(field.shape).width
        fields[name] = (word >> field.offset) & ((1 << width) - 1)
    return fields


def pack_value(layout, value):
    """The integer a port of ``layout`` carries for ``value``: nested dicts for structs, sequences for
    arrays, ints for plain fields. Raises ValueError for a missing field or an out-of-range int."""
    if isinstance(layout, data.StructLayout):
        if set(value) != set(dict(layout)):
            raise ValueError(f"Fields {sorted(value)} do not match the layout's {sorted(dict(layout))}")
        return sum(pack_value(field.shape, value[name]) << field.offset for name, field in layout)
    if isinstance(layout, data.ArrayLayout):
        if len(value) != layout.length:
            raise ValueError(f"Expected {layout.length} elements, not {len(value)}")
        width = Shape.cast(layout.elem_shape).width
        return sum(pack_value(layout.elem_shape, element) << (k * width) for k, element in enumerate(value))
    shape = Shape.cast(layout)
    low, high = (-(1 << shape.width - 1), 1 << shape.width - 1) if shape.signed else (0, 1 << shape.width)
    if not low <= value < high:
        raise ValueError(f"{value} does not fit in {shape!r}")
    return int(value) & ((1 << shape.width) - 1)  # two's complement for signed fields


def unpack_value(layout, word):
    """Inverse of ``pack_value``: nested dicts and lists of ints."""
    if isinstance(layout, data.StructLayout):
        return {name: unpack_value(field.shape, word >> field.offset) for name, field in layout}
    if isinstance(layout, data.ArrayLayout):
        width = Shape.cast(layout.elem_shape).width
        return [unpack_value(layout.elem_shape, word >> (k * width)) for k in range(layout.length)]
    shape = Shape.cast(layout)
    value = word & ((1 << shape.width) - 1)
    return value - (1 << shape.width) if shape.signed and value >> (shape.width - 1) else value
