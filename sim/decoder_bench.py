"""cocotb bench: every code of one format through its generated decoder, against the golden model.

The format comes from FGMP_FORMAT (e2m1, e4m3 or ue4m3); ``every_code_of_every_format`` runs on the
DecoderBank instead, format after format, one report each. Driver: applies each code to ``code``.
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


async def drive(code_port, code):
    code_port.value = code
    await Timer(1, unit="ns")


def monitor(decoded_port, layout):
    return unpack_fields(int(decoded_port.value), layout)


def model(codes, golden_format):
    fields = golden.decode_fields(codes, golden_format)
    return [{name: int(values[i]) for name, values in fields.items()} for i in range(codes.numel())]


async def _check_every_code(code_port, decoded_port, hw_format, golden_format):
    codes = torch.arange(1 << hw_format.code_bits)
    expected = model(codes, golden_format)
    scoreboard = Scoreboard(f"{hw_format.name}_decoder")
    for code in codes.tolist():
        await drive(code_port, code)
        scoreboard.compare(code, monitor(decoded_port, hw_format.decoded_layout), expected[code])
    scoreboard.write_report(format=hw_format.name, exhaustive=True)
    return scoreboard


@cocotb.test()
async def every_code_matches_golden(dut):
    hw_format, golden_format = _formats()
    scoreboard = await _check_every_code(dut.code, dut.decoded, hw_format, golden_format)
    scoreboard.assert_clean()


@cocotb.test()
async def every_code_of_every_format(dut):
    scoreboards = []
    for name in ("e2m1", "e4m3", "ue4m3"):
        ports = getattr(dut, f"{name}_code"), getattr(dut, f"{name}_decoded")
        scoreboards.append(await _check_every_code(*ports, getattr(hw, name.upper()), getattr(golden, name.upper())))
    for scoreboard in scoreboards:
        scoreboard.assert_clean()
