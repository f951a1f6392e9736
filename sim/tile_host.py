"""The host's side of the FGMP tile (docs/interfaces.md): loading its memories, configuring a layer, running
it and reading what it wrote, over any 32-bit bus given as two coroutines. Used by the cocotb bench and by
``fgmp e2e --tile``."""

from dataclasses import dataclass

__all__ = ["TileHost", "TileRun", "TileError"]

_START, _CLEAR = 1, 2
_BUSY, _DONE, _ERROR, _OVERFLOW, _TABLE_OVERFLOW = 1, 2, 4, 8, 16


class TileError(RuntimeError):
    pass


@dataclass(frozen=True)
class TileRun:
    cycles: int
    status: int
    fp8_blocks: int
    nvfp4_blocks: int

    @property
    def overflow(self):
        return bool(self.status & _OVERFLOW)


class TileHost:
    """``write(address, value)`` and ``read(address)`` are coroutines doing one 32-bit bus access at a byte
    address. Memory loads may go through ``post(address, value)`` (optional, a plain function that queues
    a write, in order) and ``flush()`` (a coroutine that waits until the queued writes are done).
    ``regions`` and ``registers`` come from the generated ``Tile`` (``Tile.regions``, ``REGISTERS``)."""

    def __init__(self, regions, registers, write, read, *, post=None, flush=None):
        if (post is None) != (flush is None):
            raise TypeError("post and flush go together")
        self._regions = regions
        self._registers = {name: index for index, name in enumerate(registers)}
        self._write, self._read, self._post, self._flush = write, read, post, flush

    def _address(self, region, entry, word=0):
        r = self._regions[region]
        if not 0 <= entry < r.depth:
            raise TileError(f"Entry {entry} is outside the {region} memory ({r.depth} entries)")
        return r.base + (entry * r.words + word) * 4

    async def write_register(self, name, value):
        await self._write(self._regions["registers"].base + 4 * self._registers[name], value & 0xFFFFFFFF)

    async def read_register(self, name):
        return await self._read(self._regions["registers"].base + 4 * self._registers[name])

    async def write_entries(self, region, start, values):
        """Entries ``start`` … of ``region``, each written low word first (the last word commits it)."""
        r = self._regions[region]
        if start + len(values) > r.depth:
            raise TileError(f"{len(values)} entries from {start} do not fit the {region} memory ({r.depth})")
        for offset, value in enumerate(values):
            if value >> r.width:
                raise TileError(f"A {region} entry is wider than {r.width} bits")
            for word in range(r.used_words):
                address, part = self._address(region, start + offset, word), (value >> (32 * word)) & 0xFFFFFFFF
                if self._post is not None:
                    self._post(address, part)
                else:
                    await self._write(address, part)
        if self._flush is not None:
            await self._flush()

    async def read_entries(self, region, start, count):
        r = self._regions[region]
        values = []
        for entry in range(start, start + count):
            value = 0
            for word in range(r.used_words):
                value |= await self._read(self._address(region, entry, word)) << (32 * word)
            values.append(value)
        return values

    async def load_weights(self, images):
        """Per lane (low words, high words) of ``golden.weight_images``; a lane that needs more FP8 blocks
        than the high memory holds is refused here, before anything is written."""
        lanes = sum(1 for name in self._regions if name.startswith("weights_low"))
        if len(images) != lanes:
            raise TileError(f"The weights are split into {len(images)} lanes, the tile has {lanes}")
        for lane, (low, high) in enumerate(images):
            for name, words in ((f"weights_low{lane}", low), (f"weights_high{lane}", high)):
                if len(words) > self._regions[name].depth:
                    raise TileError(f"Lane {lane} needs {len(words)} {name[:-len(str(lane))]} words, the tile "
                                    f"holds {self._regions[name].depth}")
        for lane, (low, high) in enumerate(images):
            await self.write_entries(f"weights_low{lane}", 0, low)
            await self.write_entries(f"weights_high{lane}", 0, high)

    async def load_table(self, sensitivities):
        """The next layer's sensitivity codes, one row of 16 per output block."""
        codes = [int(c) for c in sensitivities]
        rows = [sum(code << (8 * i) for i, code in enumerate(codes[r:r + 16])) for r in range(0, len(codes), 16)]
        await self.write_entries("table", 0, rows)

    async def run(self, *, tokens, outputs, inputs, lanes, x_base, y_base, scale_bits, next_config=None,
                  write_outputs=True, poll=None, timeout_polls=100_000):
        """Configure and start one layer, wait for it (``poll()`` awaits between status reads) and return
        its TileRun; a refused start or a timeout raises TileError."""
        values = {"tokens": tokens, "output_groups": outputs // lanes, "input_blocks": inputs // 16,
                  "x_base": x_base, "y_base": y_base, "scale": scale_bits,
                  "flags": int(next_config is not None) | (int(write_outputs) << 1)}
        if next_config is not None:
            values.update(actq_exponent=next_config.scale_exponent & 0xFF, actq_threshold=next_config.threshold_bits)
        for name, value in values.items():
            await self.write_register(name, value)
        await self.write_register("control", _START)
        for _ in range(timeout_polls):
            status = await self.read_register("status")
            if status & _ERROR:
                raise TileError(f"The tile refused the layer (status {status:#x}): see docs/interfaces.md")
            if status & _DONE and not status & _BUSY:
                break
            if poll is not None:
                await poll()
        else:
            raise TileError(f"The tile did not finish within {timeout_polls} status reads")
        return TileRun(await self.read_register("cycles"), status, await self.read_register("fp8_blocks"),
                       await self.read_register("nvfp4_blocks"))

    async def read_outputs(self, count, elements_per_cycle):
        """The first ``count`` FP32 results (t * M + m order)."""
        entries = await self.read_entries("outputs", 0, -(-count // elements_per_cycle))
        words = [(entry >> (32 * e)) & 0xFFFFFFFF for entry in entries for e in range(elements_per_cycle)]
        return words[:count]
