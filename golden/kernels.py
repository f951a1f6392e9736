"""Fast exact kernels behind the block quantizers and the activation unit (docs/numerics.md §2.1, §9.1).

Each kernel returns, bit for bit, what the reference implementation returns (``encode_ratio`` and the
``*_reference`` functions): numerics §2.1 and §9.1 prove why, and the tests compare them exhaustively
where the input space allows. They use FP32 and int32 elementwise torch operations, native float8
casts and small lookup tables, on the input's own device; nothing goes through float64 per element.

Two ideas carry them:
- The weight quantizer's quotient x / (G * s) has a 24-bit G, so an FP32 quotient can land on the wrong
  side of a rounding midpoint. It is computed twice, nudged down and up by 2**-20 relative (more than
  its rounding error), and both are rounded; where the two codes agree, the exact quotient (between
  them) has that code too, because rounding is monotone. Where they differ (about one element in 10**5
  on random data) the reference decides.
- In the activation unit G = 2**k and the input is BF16, so x' / s is a ratio of an 8-bit and a 4-bit
  significand: it is either exactly a midpoint or at least 2**-9 (relative) away from one, and one FP32
  division cannot cross or reach a midpoint. The native cast then rounds exactly.
"""

import math

import torch

from .formats import E2M1, E4M3, UE4M3, encode_ratio

__all__ = ["Tables", "tables", "e2m1_codes", "block_amax", "block_any", "quantize_blocks_fast", "dequantize_fast",
           "FAST_SCALE_RANGE"]

# G (weights) and 2**k (activations) between these powers of two keep every intermediate of the fast
# paths (reciprocals, s * 2**k, quotients) a normal FP32 number; outside, the reference runs.
FAST_SCALE_RANGE = (2.0**-100, 2.0**100)
_NUDGE = 2.0**-20  # > 4 FP32 roundings (4 * 2**-24) of the approximate quotient, numerics §2.1
_E4M3_NAN_CODE = 0x7F


class Tables:
    """Lookup tables on one device (built once per device from the reference codecs)."""

    def __init__(self, device):
        def f32(values):
            return torch.tensor(values, dtype=torch.float32, device=device)

        e4m3 = E4M3._code_values  # float64, NaN for NaN codes; every value exact in FP32
        self.e4m3 = e4m3.to(torch.float32).to(device)
        self.ue4m3 = UE4M3._code_values.to(torch.float32).to(device)
        self.e2m1 = E2M1._code_values.to(torch.float32).to(device)
        # dequantize: index = code + 256 * FP8 bit (an NVFP4 block reads only the low nibble)
        self.block_values = torch.cat([self.e2m1[torch.arange(256) & 0xF], self.e4m3])
        # E2M1 code from the E4M3 code of the same value (numerics §2.1): E4M3 rounds at a finer grid
        # whose cells each hold at most one E2M1 midpoint, at the cell's centre (midpoints are E4M3
        # values). Outside such cells one E2M1 code covers the cell; inside, the exact comparison with
        # the midpoint decides: code = low + (|y| > threshold).
        mids = E2M1._midpoints.tolist()
        low, threshold = [], []
        for code in range(256):
            value = float(e4m3[code])
            if math.isnan(value):
                low.append(0)
                threshold.append(math.inf)
                continue
            sign = 8 if code & 0x80 else 0
            magnitude = abs(value)
            if magnitude in mids:
                j = mids.index(magnitude)  # between E2M1 magnitude codes j and j + 1
                tie_up = j % 2 == 1  # ties go to the even code
                low.append(sign | j)
                below = torch.nextafter(torch.tensor(magnitude, dtype=torch.float32), torch.tensor(0.0))
                threshold.append(float(below) if tie_up else magnitude)
            else:
                rounded = encode_ratio(torch.tensor([magnitude], dtype=torch.float64),
                                       torch.ones((), dtype=torch.float64), E2M1)
                low.append(sign | int(rounded))
                threshold.append(math.inf)
        self.e2m1_low = torch.tensor(low, dtype=torch.uint8, device=device)
        self.e2m1_threshold = f32(threshold)
        # The midpoints nudged by -+2**-20 (relative): an approximate quotient below the first or above
        # the second is certainly below or above the midpoint (numerics §2.1); in between, undecided.
        midpoint = [m if m in mids else math.inf for m in (abs(float(v)) for v in e4m3)]
        self.e2m1_below = f32([m * (1 - _NUDGE) for m in midpoint])
        self.e2m1_above = f32([m * (1 + _NUDGE) for m in midpoint])


_TABLES = {}


def tables(device):
    device = torch.device(device)
    found = _TABLES.get(device)
    if found is None:
        found = _TABLES[device] = Tables(device)
    return found


def _e4m3_codes(y):
    """Signed E4M3 codes of FP32 values, RNE of each value, saturating at +-448 (torch >= 2.12 casts
    'satfinite'), NaN -> 0x7F."""
    return y.to(torch.float8_e4m3fn).view(torch.uint8)


def e2m1_codes(y, magnitude=None):
    """(E2M1 codes of the FP32 values y, RNE, saturating at +-6, -0 kept; the int32 table index used),
    via the E4M3 cast and the midpoint tables. ``magnitude``: |y| if the caller has it."""
    t = tables(y.device)
    index = _e4m3_codes(y).to(torch.int32)
    low = t.e2m1_low.index_select(0, index.reshape(-1)).reshape(y.shape)
    above = (y.abs() if magnitude is None else magnitude) > t.e2m1_threshold.index_select(
        0, index.reshape(-1)).reshape(y.shape)
    return low + above, index


def _as_rows(blocks):
    return blocks.reshape(-1, blocks.shape[-1])


def block_amax(magnitudes):
    """max over the last dimension (NaN and Inf propagate), by halving: 2x faster than amax(-1) on CPU
    for 16-element blocks."""
    m = magnitudes
    while m.shape[-1] > 1 and m.shape[-1] % 2 == 0:
        half = m.shape[-1] // 2
        m = torch.maximum(m[..., :half], m[..., half:])
    return m.amax(dim=-1) if m.shape[-1] > 1 else m.squeeze(-1)


def block_any(mask):
    """any() over the last dimension of a contiguous bool tensor, 8 flags at a time when they fit."""
    size = mask.shape[-1]
    if size % 8 == 0 and mask.is_contiguous() and mask.numel():
        words = mask.view(torch.uint8).view(torch.int64).reshape(*mask.shape[:-1], size // 8)
        return (words != 0).any(dim=-1) if size > 8 else words.squeeze(-1) != 0
    return mask.any(dim=-1)


def _fp8_codes(x, magnitudes, r, nudged):
    """E4M3 codes of x * r (rows x (n, B), per-row r), and where the nudged quotients x * r * (1 -+ 2**-20)
    round differently (only there can the exact quotient's code differ, numerics §2.1)."""
    low = x * nudged[0].unsqueeze(-1)
    high = x * nudged[1].unsqueeze(-1)
    codes = _e4m3_codes(low)
    return codes, codes != _e4m3_codes(high)


def _fp4_codes(x, magnitudes, r, nudged, t):
    """E2M1 codes of x * r, and where an E2M1 midpoint lies within 2**-20 of the quotient. The E4M3 code
    of the approximate quotient names its cell; crossing into a neighbouring cell does not change the
    E2M1 code except at the midpoint itself, which the nudged thresholds catch."""
    y = x * r.unsqueeze(-1)
    m = magnitudes * r.unsqueeze(-1)
    index = _e4m3_codes(y).to(torch.int32).reshape(-1)
    base = t.e2m1_low.index_select(0, index).reshape(x.shape)
    above = m > t.e2m1_above.index_select(0, index).reshape(x.shape)
    not_below = m > t.e2m1_below.index_select(0, index).reshape(x.shape)
    return base + above, above != not_below


def _exact_blocks(codes, undecided, x, den64, fmt):
    """Re-encode with the reference every block (row) that has an undecided element."""
    rows = block_any(undecided).nonzero().squeeze(-1)
    if not rows.numel():
        return codes
    codes = codes.clone()
    codes[rows] = encode_ratio(x[rows], den64[rows].unsqueeze(-1), fmt).to(codes.device)
    return codes


def _scale_codes(amax, element_max, g64, t):
    """RNE_UE4M3(amax / (element_max * G)) per block (element_max: float per block as a float64
    tensor), bracketed like the elements and settled by the reference where the bracket straddles."""
    inverse = (1.0 / (element_max * g64)).to(torch.float32)  # one rounding of the exact reciprocal
    low = amax * (inverse * (1 - _NUDGE))
    high = amax * (inverse * (1 + _NUDGE))
    codes_low, codes_high = _e4m3_codes(low), _e4m3_codes(high)
    disagree = codes_low != codes_high
    if bool(disagree.any()):
        where = disagree.nonzero(as_tuple=True)
        exact = encode_ratio(amax[where], (element_max * g64)[where], UE4M3)
        codes_low = codes_low.clone()
        codes_low[where] = exact.to(codes_low.device)
    return codes_low


def quantize_blocks_fast(blocks, magnitudes, amax, precision, g, block_scales=None):
    """Codes and scale codes of numerics §4 for FP32 ``blocks`` (..., n_blocks, B) with their |x| and
    per-block amax, ``precision`` (..., n_blocks) bool, G a positive FP32 0-d tensor within
    FAST_SCALE_RANGE. Identical to the reference quantizer (numerics §2.1)."""
    t = tables(blocks.device)
    g64 = g.to(torch.float64)
    if block_scales is None:
        element_max = torch.where(precision, E4M3.max_value, E2M1.max_value).to(torch.float64)
        scales = _scale_codes(amax, element_max, g64, t)
    else:
        scales = block_scales
    scale_values = t.ue4m3.index_select(0, scales.reshape(-1).to(torch.int32)).reshape(scales.shape)
    zero_scale = scale_values == 0
    # 1/(G s) in FP32 (two roundings); zero scales get 0, so their quotients are +-0 (made +0 below).
    inverse_g = (1.0 / g64).to(torch.float32)
    r = torch.where(zero_scale, 0.0, inverse_g / torch.where(zero_scale, 1.0, scale_values)).reshape(-1)
    den64 = (g64 * scale_values.to(torch.float64)).reshape(-1)
    rows, row_magnitudes = _as_rows(blocks), _as_rows(magnitudes)
    fp8_rows = precision.reshape(-1)
    codes = torch.empty(rows.shape, dtype=torch.uint8, device=blocks.device)
    any_fp8, all_fp8 = bool(fp8_rows.any()), bool(fp8_rows.all())
    for fp8, fmt in ((True, E4M3), (False, E2M1)):
        if not (any_fp8 if fp8 else not all_fp8):
            continue
        whole = all_fp8 if fp8 else not any_fp8
        part = None if whole else (fp8_rows if fp8 else ~fp8_rows).nonzero().squeeze(-1)
        pick = (lambda v: v) if whole else (lambda v: v[part])
        x, mags, rp = pick(rows), pick(row_magnitudes), pick(r)
        if fp8:
            found, undecided = _fp8_codes(x, mags, rp, (rp * (1 - _NUDGE), rp * (1 + _NUDGE)))
        else:
            found, undecided = _fp4_codes(x, mags, rp, None, t)
        found = _exact_blocks(found, undecided, x, pick(den64), fmt)
        if whole:
            codes = found
        else:
            codes[part] = found
    codes = codes.reshape(blocks.shape)
    if bool(zero_scale.any()):
        codes = codes.masked_fill(zero_scale.unsqueeze(-1), 0)  # numerics §4.4: +0 codes
    return codes, scales


def dequantize_fast(codes, scales, precision, g):
    """FP32 G * s * dec(code): s * dec is exact in FP32 (at most 8 significant bits, 2**-18 .. 2**18),
    so the one multiplication by G is the single rounding of the exact product (numerics §3)."""
    t = tables(codes.device)
    index = codes.to(torch.int32) + (precision.to(torch.int32) << 8).unsqueeze(-1)
    elements = t.block_values.index_select(0, index.reshape(-1)).reshape(codes.shape)
    scale_values = t.ue4m3.index_select(0, scales.reshape(-1).to(torch.int32)).reshape(scales.shape)
    return elements * scale_values.unsqueeze(-1) * g.to(device=codes.device, dtype=torch.float32)


# ---- the activation unit (numerics §9.1) -------------------------------------------------------------

ACTIVATION_FAST_EXPONENTS = (-40, 40)  # |k| <= 40: s * 2**k, D * 2**k and the terms stay normal FP32
_SATURATION_FREE_AMAX = 2688.0  # amax' <= 6 * 448: s4 does not saturate, and every term is FP32-exact
_DECISION_MARGIN = 2.0**-17  # > the FP32 sum's error (15 * 2**-24), the cut (2**-36) and T's rounding


def chunk_rows(total_rows, row_elements, device):
    """Row ranges whose intermediates stay in the CPU's caches (about 2**18 elements: 2x faster than whole
    tensors here); one range on other devices."""
    if torch.device(device).type != "cpu":
        return [(0, total_rows)]
    step = max(1, (1 << 18) // max(1, row_elements))
    return [(start, min(start + step, total_rows)) for start in range(0, total_rows, step)]


def _device_scalar(value, device):
    # A 0-d tensor on the device, never a Python scalar: CUDA divides by a host scalar through its
    # reciprocal, which is not the correctly rounded quotient the proofs rely on.
    return torch.tensor(value, dtype=torch.float32, device=device)


def _unit_front(x, k, block_size, t):
    """Shared start of both paths: FP32 blocks, magnitudes, the fast-block mask, both scale codes and
    the divisors s * 2**k (+Inf for a zero scale, so its quotients are 0)."""
    device = x.device
    power = 2.0**k
    blocks = x.float().reshape(x.shape[0], -1, block_size)  # exact
    magnitudes = blocks.abs()
    amax = block_amax(magnitudes)
    fast = amax <= _device_scalar(_SATURATION_FREE_AMAX * power, device)
    # One correctly rounded division of an 8-bit significand by 6 * 2**k or 7 * 2**(6 + k): no UE4M3
    # midpoint is crossed or reached (§9.1), so the cast rounds the exact amax' / 6 and amax' / 448.
    s4 = _e4m3_codes(amax / _device_scalar(6.0 * power, device))
    s8 = _e4m3_codes(amax / _device_scalar(448.0 * power, device))
    inf = _device_scalar(math.inf, device)
    scaled = _device_scalar(power, device)
    den4 = t.ue4m3.index_select(0, s4.reshape(-1).to(torch.int32)).reshape(s4.shape) * scaled
    den8 = t.ue4m3.index_select(0, s8.reshape(-1).to(torch.int32)).reshape(s8.shape) * scaled
    return blocks, magnitudes, fast, s4, s8, torch.where(den4 == 0, inf, den4), torch.where(den8 == 0, inf, den8)


# Per candidate (NVFP4, FP8): the smallest exponent of the element grid as FP32 bits, the magic
# constant's offset (23 - mantissa bits, as an exponent increment) and the largest element.
_GRID_MIN_BITS = ((127 + 0) << 23, (127 - 6) << 23)
_MAGIC_OFFSET = (22 << 23, 20 << 23)
_ELEMENT_MAX = (6.0, 448.0)


def round_to_grid(y, fp8):
    """RNE of non-negative FP32 values onto the E4M3 (``fp8``) or E2M1 value grid, saturating, as FP32
    values: the magic addition of unit_values, out of place (unit_values meets only y <= 9 and y <= 672
    in the blocks it keeps; here anything above twice the largest element is clamped first, so that C
    stays finite)."""
    i = int(fp8)
    y = y.clamp(max=2 * _ELEMENT_MAX[i])
    magic = ((y.view(torch.int32) & 0x7F800000).clamp(min=_GRID_MIN_BITS[i]) + _MAGIC_OFFSET[i]).view(torch.float32)
    return ((y + magic) - magic).clamp(max=_ELEMENT_MAX[i])


class UnitConstants:
    """Per layer configuration and device: the divisors and limits of the fast path as device tensors,
    and the sensitivities scaled to real units (numerics §9.1). Made once and reused every call."""

    def __init__(self, sensitivities, k, threshold, block_size, device):
        t = tables(device)
        power = 2.0**k

        def column(values, dtype=torch.float32):
            return torch.tensor(values, dtype=dtype, device=device).reshape(2, 1, 1, 1)

        self.block_size, self.k, self.threshold = block_size, k, threshold
        self.power = _device_scalar(power, device)
        self.limit = _device_scalar(_SATURATION_FREE_AMAX * power, device)
        self.divisors = column([6.0 * power, 448.0 * power]).squeeze(-1)
        self.grid_min = column(_GRID_MIN_BITS, torch.int32)
        self.magic = column(_MAGIC_OFFSET, torch.int32)
        self.element_max = column(_ELEMENT_MAX)
        self.inf = _device_scalar(math.inf, device)
        f = t.ue4m3.index_select(0, sensitivities.to(device=device, dtype=torch.int32))
        self.f_real = (f * 2.0 ** (-2 * k)).reshape(-1, block_size)  # exact: |k| <= 40
        if math.isinf(threshold):
            self.above = self.below = None
        else:
            self.above = _device_scalar(threshold * (1 + _DECISION_MARGIN), device)
            self.below = _device_scalar(threshold * (1 - _DECISION_MARGIN), device)
        self.tables = t


_WORKSPACES = {}
_WORKSPACE_LIMIT = 8


def _workspace(device, rows, width, block_size):
    """Buffers for one chunk shape, reused across calls and layers: fresh allocations of this size go to
    mmap on Linux, and their page faults cost more than the arithmetic (3x measured)."""
    key = (torch.device(device), rows, width, block_size)
    found = _WORKSPACES.pop(key, None)
    if found is None:
        blocks = width // block_size
        found = {
            "x": torch.empty(rows, blocks, block_size, dtype=torch.float32, device=device),
            "magnitudes": torch.empty(rows, blocks, block_size, dtype=torch.float32, device=device),
            "half": torch.empty(rows, blocks, block_size // 2, dtype=torch.float32, device=device),
            "quarter": torch.empty(rows, blocks, block_size // 4, dtype=torch.float32, device=device),
            "y": torch.empty(2, rows, blocks, block_size, dtype=torch.float32, device=device),
            "work": torch.empty(2, rows, blocks, block_size, dtype=torch.float32, device=device),
        }
        while len(_WORKSPACES) >= _WORKSPACE_LIMIT:
            _WORKSPACES.pop(next(iter(_WORKSPACES)))
    _WORKSPACES[key] = found  # most recently used last
    return found


def _block_amax_into(magnitudes, half, quarter):
    """block_amax without fresh large allocations: the first two halvings go into the buffers."""
    size = magnitudes.shape[-1]
    if size % 4 or size < 4:
        return block_amax(magnitudes)
    torch.maximum(magnitudes[..., :size // 2], magnitudes[..., size // 2:], out=half)
    torch.maximum(half[..., :size // 4], half[..., size // 4:], out=quarter)
    return block_amax(quarter)


def unit_values(x, constants, out, precision=None):
    """The activation unit's dequantized output (written into ``out``, FP32 (n, K)) and decisions for
    BF16 rows x (n, K) (numerics §9.1), and the flat indices of the blocks the reference must redo
    (non-finite or saturating). With ``precision`` (n, n_blocks) bool the decisions are given (the
    software rules), and the output is the block quantizer's with G = 2**k.

    Both candidates are rounded at once (stacked), by adding C = 2**(max(e, e_min) + 23 - m), e the
    exponent of y = x' / s: the sum's last bit is then worth the element grid's spacing at y, so the
    addition rounds y to the grid (ties to even) and subtracting C is exact. Values are in x's units:
    s * dec(q) * 2**k and the difference D * 2**k are exact FP32 numbers."""
    c = constants
    t = c.tables
    n = x.shape[0]
    w = _workspace(x.device, n, x.shape[1], c.block_size)
    blocks = w["x"]
    blocks.view(n, -1).copy_(x)  # exact
    magnitudes = torch.abs(blocks, out=w["magnitudes"])
    amax = _block_amax_into(magnitudes, w["half"], w["quarter"])
    fast = amax <= c.limit
    # RNE_UE4M3(amax' / 6) and RNE_UE4M3(amax' / 448): one correctly rounded division, then the cast.
    scale_codes = _e4m3_codes(amax / c.divisors)  # (2, n, n_blocks)
    scales = t.ue4m3.index_select(0, scale_codes.reshape(-1).to(torch.int32)).reshape(scale_codes.shape)
    multiplier = (scales * c.power).unsqueeze(-1)  # s * 2**k: exact
    y, work = w["y"], w["work"]
    torch.div(magnitudes, torch.where(multiplier == 0, c.inf, multiplier), out=y)  # one rounding; 0 if s = 0
    magic = work.view(torch.int32)
    torch.bitwise_and(y.view(torch.int32), 0x7F800000, out=magic)
    torch.maximum(magic, c.grid_min, out=magic)
    magic.add_(c.magic)
    y.add_(work).sub_(work)
    torch.minimum(y, c.element_max, out=y)
    y.mul_(multiplier)
    v4, v8 = y[0], y[1]
    d, terms = work[0], work[1]
    torch.sub(v4, v8, out=d)
    if precision is not None:
        fp8, check = precision, ~fast
    elif c.above is None:  # T = +Inf: never FP8
        fp8, check = torch.zeros_like(fast), ~fast
    else:
        torch.mul(d, d, out=terms)
        terms.mul_(c.f_real)  # real units, exact
        approximate = terms.sum(dim=-1)
        fp8 = approximate > c.above
        check = ~fast | ((approximate > c.below) & ~fp8)
    rows = check.reshape(-1).nonzero().squeeze(-1)
    slow = rows
    if rows.numel() and precision is None:
        is_fast = fast.reshape(-1)[rows]
        near, slow = rows[is_fast], rows[~is_fast]
        if near.numel():
            fp8.view(-1)[near] = exact_scores(terms, near) > c.threshold
    # The chosen candidate: v4 - 1 * (v4 - v8) is exactly v8 (all three are exact FP32 values).
    torch.mul(d, fp8.unsqueeze(-1).to(torch.float32), out=terms)
    v4.sub_(terms)
    chosen_zero = torch.where(fp8, scales[1] == 0, scales[0] == 0)  # a zero scale stores +0 codes
    sign = torch.where(chosen_zero, 0, -(1 << 31)).to(torch.int32).unsqueeze(-1)
    signs = torch.bitwise_and(blocks.view(torch.int32), sign, out=magic[1])
    torch.bitwise_or(v4.view(torch.int32), signs, out=out.view(torch.int32).view(n, -1, c.block_size))
    return fp8, slow


def unit_blocks(x, sensitivities, k, block_size):
    """Codes (magnitudes), scale codes, both candidates' codes and the exact scores of BF16 rows x (n, K)
    (numerics §9.1), with the fast-block mask; signs and decisions are the caller's."""
    t = tables(x.device)
    blocks, magnitudes, fast, s4, s8, den4, den8 = _unit_front(x, k, block_size, t)
    y4 = magnitudes / den4.unsqueeze(-1)  # x' / s4, one rounding: no midpoint is crossed or reached
    y8 = magnitudes / den8.unsqueeze(-1)
    q8 = _e4m3_codes(y8)
    v8 = t.e4m3.index_select(0, q8.reshape(-1).to(torch.int32)).reshape(q8.shape)
    q4, _ = e2m1_codes(y4, y4)
    v4 = t.e2m1.index_select(0, q4.reshape(-1).to(torch.int32)).reshape(q4.shape)
    power = _device_scalar(2.0 ** -k, x.device)
    d = v4 * (torch.where(torch.isinf(den4), 0.0, den4) * power).unsqueeze(-1) - \
        v8 * (torch.where(torch.isinf(den8), 0.0, den8) * power).unsqueeze(-1)
    f = t.ue4m3.index_select(0, sensitivities.to(device=x.device, dtype=torch.int32))
    terms = d * d * f.reshape(-1, block_size)  # exact: at most 24 significant bits (§9.1)
    return blocks, fast, s4, s8, q4, q8, exact_scores(terms).reshape(fast.shape)


def exact_scores(terms, rows=None):
    """The unit's truncated score of each block (float64, exact) from exact FP32 terms f_i * D_i**2 (real
    units): every term cut at 2**(E - 40), E the largest term's exponent, and the cut terms summed in
    two int32 parts (numerics §9.1). ``rows``: flat block indices, or every block."""
    terms = terms.reshape(-1, terms.shape[-1])
    if rows is not None:
        terms = terms[rows]
    top = block_amax(terms)
    exponent = ((top.view(torch.int32) >> 23) - 127).clamp(min=-60)  # E; top is 0 or normal
    window = ((167 - exponent) << 23).view(torch.float32)  # 2**(40 - E)
    units = terms * window.unsqueeze(-1)  # < 2**41, at most 24 significant bits
    high = (units * 2.0**-14).to(torch.int32)  # floor; a 24-bit float's floor is exact in FP32
    low = (units - high.to(torch.float32) * 2.0**14).to(torch.int32)  # < 2**14
    total = high.sum(dim=-1, dtype=torch.int32).to(torch.float64) * 2.0**14 + \
        low.sum(dim=-1, dtype=torch.int32).to(torch.float64)
    return torch.ldexp(total, (exponent - 40).to(torch.float64))
