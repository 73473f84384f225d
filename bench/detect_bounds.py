"""Time and peak memory of reading + detecting a face in one image, each in a fresh process.

    python bench/detect_bounds.py IMAGE [IMAGE ...] [--max-memory-gb 12] [--timeout 600] [--no-cnn]

For each image a child process runs ``read_image``, ``detect`` and (if a face was found) the
150x150 chip warp under an address-space limit
(``RLIMIT_AS``) and a wall-clock timeout, and reports wall time of the read, the detection and the chip,
the child's peak RSS (``ru_maxrss``) and the outcome (status and box, no face, or how it failed).
Used for issue 36's before/after table; the child's peak RSS includes torch and dlib's models.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

CHILD = r"""
import json, resource, sys, time
lim = int(float(sys.argv[2]) * 2**30)
resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
out = {}
try:
    from faceveil.data.io import read_image
    from faceveil.data.align import detect, chips_from_images, _dlib_models
    from faceveil.models.base import CropSpec
    from faceveil.errors import FaceNotFoundError, FaceveilError
    _dlib_models()
    t = time.perf_counter()
    img = read_image(sys.argv[1])
    out["read_s"] = round(time.perf_counter() - t, 2)
    out["shape"] = list(img.shape[:2])
    t = time.perf_counter()
    try:
        lm = detect(img, source=sys.argv[1], cnn=sys.argv[3] == "1")
        out["outcome"] = f"face status={lm.status} rect={lm.rect}"
        out["detect_s"] = round(time.perf_counter() - t, 2)
        t = time.perf_counter()
        chips_from_images([img], [lm], CropSpec(150, 0.25))
        out["chip_s"] = round(time.perf_counter() - t, 2)
    except FaceNotFoundError:
        out["outcome"] = "FaceNotFoundError"
        out["detect_s"] = round(time.perf_counter() - t, 2)
except MemoryError:
    out["outcome"] = "MemoryError"
except FaceveilError as e:
    out["outcome"] = f"{type(e).__name__}: {e}"[:160]
except Exception as e:
    out["outcome"] = f"{type(e).__name__}: {e}"[:160]
out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
print(json.dumps(out))
"""


def measure(path: str, max_memory_gb: float, timeout: float, cnn: bool) -> dict:
    """Run the child on ``path``; returns its JSON report plus total wall time and exit code."""
    t = time.perf_counter()
    try:
        p = subprocess.run([sys.executable, "-c", CHILD, path, str(max_memory_gb), "1" if cnn else "0"],
                           capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"image": path, "outcome": f"timeout after {timeout:.0f} s"}
    wall = round(time.perf_counter() - t, 1)
    line = p.stdout.strip().splitlines()[-1] if p.stdout.strip() else ""
    try:
        r = json.loads(line)
    except json.JSONDecodeError:
        r = {"outcome": f"died (exit {p.returncode}): {p.stderr.strip().splitlines()[-1:]}"[:200]}
    r.update(image=path, total_s=wall, exit=p.returncode)
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("images", nargs="+")
    ap.add_argument("--max-memory-gb", type=float, default=12.0)
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--no-cnn", action="store_true")
    a = ap.parse_args()
    for path in a.images:
        print(json.dumps(measure(path, a.max_memory_gb, a.timeout, not a.no_cnn)), flush=True)


if __name__ == "__main__":
    main()
