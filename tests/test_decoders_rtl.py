"""The Amaranth decoders against the golden model over every code, and their parameter validation."""

import pytest
import torch
from amaranth.lib import data

from fgmp import golden, hw
from rtl_ops import rtl_decode_fields

FORMAT_NAMES = ["E2M1", "E4M3", "UE4M3"]



def golden_decode_fields(golden_format, codes):
    return {name: values.tolist() for name, values in golden.decode_fields(torch.tensor(codes), golden_format).items()}


@pytest.mark.parametrize("name", FORMAT_NAMES)
def test_every_code_matches_golden(name):
    fmt = getattr(hw, name)
    codes = list(range(1 << fmt.code_bits))
    assert rtl_decode_fields(fmt, codes) == golden_decode_fields(getattr(golden, name), codes)


@pytest.mark.parametrize("name", FORMAT_NAMES)
def test_hw_and_golden_formats_agree(name):
    hw_format, golden_format = getattr(hw, name), getattr(golden, name)
    for field in ("exponent_bits", "mantissa_bits", "bias", "signed", "has_nan", "code_bits"):
        assert getattr(hw_format, field) == getattr(golden_format, field), field


@pytest.mark.parametrize("name", FORMAT_NAMES)
def test_decoded_fields_give_the_code_value(name):
    """The unpacked form is the value: (-1)^s * significand * 2^(exponent - bias - mantissa_bits)."""
    fmt = getattr(golden, name)
    codes = torch.arange(1 << fmt.code_bits)
    fields = golden.decode_fields(codes, fmt)
    sign = fields.get("sign", torch.zeros_like(codes))
    value = (1 - 2 * sign) * fields["significand"] * torch.pow(
        2.0, (fields["exponent"] - fmt.bias - fmt.mantissa_bits).double()
    )
    expected = golden.decode(codes, fmt, dtype=torch.float64)
    finite = ~torch.isnan(expected)
    if "nan" in fields:
        assert torch.equal(fields["nan"].bool(), ~finite)
    assert torch.equal(value[finite], expected[finite])
    assert torch.equal(fields["zero"][finite].bool(), expected[finite] == 0)


def test_decoded_layouts_are_documented_widths():
    assert hw.E2M1.decoded_layout == data.StructLayout({"sign": 1, "exponent": 2, "significand": 2, "zero": 1})
    assert hw.E4M3.decoded_layout == data.StructLayout(
        {"sign": 1, "exponent": 4, "significand": 4, "zero": 1, "nan": 1})
    assert hw.UE4M3.decoded_layout == data.StructLayout({"exponent": 4, "significand": 4, "zero": 1, "nan": 1})


def test_decoder_exposes_its_format_read_only():
    decoder = hw.Decoder(format=hw.E4M3)
    assert decoder.format is hw.E4M3
    with pytest.raises(AttributeError):
        decoder.format = hw.E2M1


def test_decoder_rejects_a_non_format():
    with pytest.raises(TypeError, match=r"^Format must be a fgmp\.hw\.formats\.Format, not 'e4m3'$"):
        hw.Decoder(format="e4m3")


def test_decoder_parameters_are_keyword_only():
    with pytest.raises(TypeError):
        hw.Decoder(hw.E4M3)


BASE = dict(name="x", exponent_bits=4, mantissa_bits=3, bias=7, signed=True, has_nan=True, code_bits=8)


@pytest.mark.parametrize("change, error, message", [
    (dict(exponent_bits=0), ValueError, r"^exponent_bits must be at least 1, not 0$"),
    (dict(mantissa_bits=-1), ValueError, r"^mantissa_bits must be non-negative, not -1$"),
    (dict(code_bits=7), ValueError, r"^code_bits must be at least 8 for this format, not 7$"),
    (dict(code_bits=9), ValueError, r"^A signed format must have code_bits == 8, not 9$"),
    (dict(exponent_bits=1, mantissa_bits=0, code_bits=2), ValueError,
     r"^A format with NaN needs at least 2 exponent and mantissa bits$"),
    (dict(bias=1.5), TypeError, r"^bias must be an int, not 1\.5$"),
    (dict(exponent_bits=True), TypeError, r"^exponent_bits must be an int, not True$"),
    (dict(signed=1), TypeError, r"^signed must be a bool, not 1$"),
])
def test_format_validation(change, error, message):
    with pytest.raises(error, match=message):
        hw.Format(**{**BASE, **change})


def test_a_custom_format_decodes_like_its_golden_twin():
    """The generator is parametric: an E5M2-like format without NaN decodes as the same golden rules say."""
    hw_format = hw.Format("e3m2", exponent_bits=3, mantissa_bits=2, bias=3, signed=True, has_nan=False, code_bits=6)
    golden_format = golden.FloatFormat("e3m2", exponent_bits=3, mantissa_bits=2, bias=3, signed=True,
                                       has_nan=False, code_bits=6)
    codes = list(range(64))
    assert rtl_decode_fields(hw_format, codes) == golden_decode_fields(golden_format, codes)
