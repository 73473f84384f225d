"""A reader for dlib's binary serialisation format (dlib/serialize.h, dlib/cuda/tensor.h).

Written from dlib's source, not linked against it, so the recogniser runs in PyTorch alone:
- integers: one control byte (low 4 bits = number of bytes that follow, bit 0x80 = negative),
  then the magnitude as little-endian bytes;
- strings: an integer length, then the bytes;
- booleans: the ASCII characters '0' / '1';
- scalar floats/doubles: mantissa (int64) then exponent (int16), value = m * 2**e
  (dlib/float_details.h; exponent 32000 / 32001 / 32002 encode inf / -inf / NaN);
- tensors: version 2, num_samples, k, nr, nc, then little-endian float32 values;
- alias tensors: version 1, num_samples, k, nr, nc (no data).
"""

from __future__ import annotations

import math

import numpy as np

from faceveil.errors import FaceveilDataError


class DlibReader:
    """A cursor over the bytes of a dlib-serialised file."""

    def __init__(self, data: bytes, source: str = "<bytes>") -> None:
        self.buf = memoryview(data)
        self.pos = 0
        self.source = source

    def _fail(self, what: str) -> FaceveilDataError:
        return FaceveilDataError(f"{self.source}: {what} at byte {self.pos}")

    def _take(self, n: int) -> memoryview:
        if self.pos + n > len(self.buf):
            raise self._fail(f"unexpected end of file reading {n} bytes")
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def at_end(self) -> bool:
        return self.pos == len(self.buf)

    def int(self) -> int:
        ctrl = self._take(1)[0]
        n = ctrl & 0x0F
        if n > 8:
            raise self._fail(f"bad integer control byte 0x{ctrl:02x}")
        val = int.from_bytes(self._take(n), "little") if n else 0
        return -val if ctrl & 0x80 else val

    def string(self) -> str:
        n = self.int()
        if n < 0 or n > 1 << 20:
            raise self._fail(f"bad string length {n}")
        return bytes(self._take(n)).decode("ascii")

    def expect_string(self, *allowed: str) -> str:
        start = self.pos
        s = self.string()
        if s not in allowed:
            self.pos = start
            raise self._fail(f"expected one of {allowed}, found {s!r}")
        return s

    def bool(self) -> bool:
        c = bytes(self._take(1))
        if c not in (b"0", b"1"):
            raise self._fail(f"bad boolean byte {c!r}")
        return c == b"1"

    def float(self) -> float:
        m = self.int()
        e = self.int()
        if e == 32000:
            return math.inf
        if e == 32001:
            return -math.inf
        if e == 32002:
            return math.nan
        return math.ldexp(m, e)

    def tensor(self) -> np.ndarray:
        """A dlib ``tensor``: returns float32 array of shape (num_samples, k, nr, nc)."""
        v = self.int()
        if v != 2:
            raise self._fail(f"unsupported tensor version {v}")
        shape = tuple(self.int() for _ in range(4))
        if any(d < 0 for d in shape):
            raise self._fail(f"negative tensor shape {shape}")
        count = int(np.prod(shape))
        raw = self._take(4 * count)
        return np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(shape)

    def alias_tensor(self) -> tuple[int, int, int, int]:
        v = self.int()
        if v != 1:
            raise self._fail(f"unsupported alias_tensor version {v}")
        return tuple(self.int() for _ in range(4))  # type: ignore[return-value]
