"""cocotb bench: every code of one format through its generated decoder, against the golden model.

The format comes from FGMP_FORMAT (e2m1, e4m3 or ue4m3). Driver: applies each code to ``code``.
Monitor: samples ``decoded`` once the combinational logic has settled. Model: golden.decode_fields.
Scoreboard: field-by-field comparison, JSON report.
"""

import os

import cocotb
import torch
from cocotb.triggers import Timer

from fgmp import golden, hw
from .fields import unpack_fields
from .scoreboard import Scoreboard

FORMAT_ENV = "FGMP_FORMAT"


def _formats():
    name = os.environ[FORMAT_ENV].upper()
    return getattr(hw, name), getattr(golden, name)


async def drive(dut, code):
    dut.code.value = code
    await Timer(1, unit="ns")


def monitor(dut, layout):
    return unpack_fields(int(dut.decoded.value), layout)


def model(codes, golden_format):
    fields = golden.decode_fields(codes, golden_format)
    return [{name: int(values[i]) for name, values in fields.items()} for i in range(codes.numel())]


@cocotb.test()
async def every_code_matches_golden(dut):
    hw_format, golden_format = _formats()
    codes = torch.arange(1 << hw_format.code_bits)
    expected = model(codes, golden_format)
    scoreboard = Scoreboard(f"{hw_format.name}_decoder")
    for code in codes.tolist():
        await drive(dut, code)
        scoreboard.compare(code, monitor(dut, hw_format.decoded_layout), expected[code])
    scoreboard.write_report(format=hw_format.name, exhaustive=True)
    scoreboard.assert_clean()
