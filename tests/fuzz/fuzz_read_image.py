"""Coverage-guided fuzzing of ``read_image`` and PIL's decoders with atheris (libFuzzer).

    python tests/fuzz/fuzz_read_image.py [CORPUS_DIR ...] -runs=20000 -max_len=65536 -timeout=20

Each input is written to a file and read: it must decode to an RGB uint8 array or raise
FaceveilDataError. Any other exception, a hang (-timeout) or a crash is a finding: libFuzzer stops,
exits non-zero and writes the input as crash-*/timeout-* in the current directory. PIL and its
format plugins are instrumented for coverage. tests/fuzz/test_atheris.py runs a fixed number of
iterations from real-face seeds (slow marker).
"""

from __future__ import annotations

import os
import sys
import tempfile

import atheris
import numpy as np

with atheris.instrument_imports():
    from PIL import Image

    Image.init()  # imports every format plugin now, so they are instrumented too

from faceveil.data.io import read_image  # noqa: E402
from faceveil.errors import FaceveilDataError  # noqa: E402

_PATH = os.path.join(tempfile.mkdtemp(prefix="faceveil-fuzz-"), "input")


def test_one_input(data: bytes) -> None:
    """The property: a valid RGB uint8 array, or FaceveilDataError naming the file."""
    with open(_PATH, "wb") as f:
        f.write(data)
    try:
        img = read_image(_PATH)
    except FaceveilDataError as e:
        if _PATH not in str(e):
            raise AssertionError(f"error does not name the file: {e}") from e
        return
    if not (isinstance(img, np.ndarray) and img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3):
        raise AssertionError(f"bad result {type(img)} {getattr(img, 'shape', None)} {getattr(img, 'dtype', None)}")


def main() -> None:
    atheris.instrument_all()  # faceveil.data.io and whatever else is loaded
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
