"""Face detection, 5-point landmarks and dlib-identical face chips, warped in batches with torch.

Detection uses dlib's HOG frontal face detector (upsample 0, then 1 if nothing was found; dlib's
MMOD CNN detector as a last resort) and the 5-point shape predictor from ``face_recognition_models``.
The detectors see a copy of the image shrunk to a pixel budget (:data:`HOG_MAX_PIXELS`,
:data:`CNN_MAX_PIXELS`) so time and memory are bounded whatever the input size; the landmarks are
then found on the full-resolution image. Images within the budgets (LFW, CelebA) are detected on
the original, exactly as before. Chips reproduce
``dlib.get_face_chip(img, shape, size, padding)``:

1. ``get_face_chip_details`` (dlib/image_transforms/interpolation.h): a similarity transform
   (Umeyama least squares) from dlib's 5-point template, scaled by ``(padding + p)/(2 padding + 1)
   * size``, to the detected landmarks gives an angle and a centred rectangle of side
   ``size * scale`` (dlib's ``centered_drect`` subtracts one from width and height);
2. ``extract_image_chips``: an affine map sends chip corners (0,0), (size-1,0), (0,size-1) to the
   rectangle's corners rotated about its centre; each chip pixel is sampled bilinearly.

We do step 2 with ``torch.nn.functional.grid_sample`` (bilinear, ``align_corners=True``) so many
chips warp in one call. dlib truncates interpolated values to uint8; we do the same. When the
rectangle is more than twice the chip size dlib first builds an image pyramid; we antialias
instead (area downscale), a documented approximation that does not arise for LFW/CelebA chips.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from faceveil.config import cache_dir, config_hash, file_lock
from faceveil.data.crop import CropSpec
from faceveil.data.io import read_image
from faceveil.errors import FaceNotFoundError, FaceveilCacheError, FaceveilDataError
from faceveil.storage import discard, load_cache, report_bad, verify, write_atomically

#: dlib's 5-point template (get_face_chip_details), in units of the unpadded template square.
TEMPLATE_5 = np.array(
    [
        [0.8595674595992, 0.2134981538014],
        [0.6460604764104, 0.2289674387677],
        [0.1205750620789, 0.2137274526848],
        [0.3340850613712, 0.2290642403242],
        [0.4901123135679, 0.6277975316475],
    ]
)

#: Fallback landmarks (fractions of image width/height) used when no face is found and the caller
#: asked for a centre crop: the median 5-point landmarks of dlib detections on LFW deep-funneled
#: images, whose faces are centred. Results that used it are flagged ``fallback=True``.
CENTRE_FALLBACK_5 = np.array([[0.612, 0.452], [0.548, 0.452], [0.384, 0.456], [0.448, 0.456], [0.5, 0.576]])

ALIGN_VERSION = 2  # bump when the chip computation changes (invalidates caches)

STATUS_DETECTED = 0
STATUS_UPSAMPLED = 1
STATUS_FALLBACK = 2
STATUS_CNN = 3

#: Pixel budget of the HOG detector: the most pixels it sees, after its own 2x upsampling; larger
#: images are detected on a shrunk copy. Measured on this 2-core machine (flat image, no face, so
#: the whole pyramid is scanned): 4 MP seen 0.3 s ~40 MB, 16 MP 1.5 s ~150 MB. At 16 MP a 12 MP
#: photo is still scanned at full resolution (upsample 0) and 1.15x (upsample 1).
HOG_MAX_PIXELS = 16_000_000
#: Pixel budget of the MMOD CNN fallback (pixels seen after its upsampling). It costs ~1 KB and
#: ~7 ms of CPU per pixel seen (measured: 0.25 MP 1.5 s 0.25 GB, 1 MP 7 s 1 GB; unbounded, a
#: 1000x1000 image upsampled to 4 MP took 42 s and 4 GB, a 2000x2000 one > 8 GB). LFW's 250x250
#: images upsampled once (0.25 MP) stay within it, so they are detected exactly as before.
CNN_MAX_PIXELS = 1_000_000
#: Smallest image side detect() accepts. dlib's HOG detector scans an 80x80 window, so even at its
#: 2x upsampling an image under 40x40 holds no window position at all; measured on LFW faces
#: shrunk step by step, the smallest found have 27-32 px boxes, in 64-80 px images. A chip from a
#: smaller image would be a blow-up of a few pixels, so 1x1, 2x2, ... 39xN are refused outright.
MIN_DETECT_SIDE = 40


@dataclass
class Landmarks:
    """5-point landmarks of one image: ``points`` (5,2) in pixel (x,y), the detector box
    ``rect`` (left, top, right, bottom), the image ``shape`` (H, W), and how they were found.

    ``n_faces`` is how many faces the successful detector stage found (0 for the centre-crop
    fallback) and ``select`` the rule that chose among them ("largest" or "centre");
    :attr:`selection` says it in words, e.g. for ``faceveil protect`` to print."""

    points: np.ndarray
    rect: tuple[int, int, int, int]
    shape: tuple[int, int]
    status: int = STATUS_DETECTED
    n_faces: int = 1
    select: str = "largest"

    @property
    def fallback(self) -> bool:
        return self.status == STATUS_FALLBACK

    @property
    def selection(self) -> str:
        """How the face was chosen, e.g. "3 faces found; used the largest"."""
        if self.status == STATUS_FALLBACK:
            return "no face found; used the centre-crop fallback"
        if self.n_faces <= 1:
            return "1 face found"
        rule = "largest" if self.select == "largest" else "one nearest the image centre"
        return f"{self.n_faces} faces found; used the {rule}"


# ---------------------------------------------------------------------------------------------
# Detection
# ---------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _dlib_models():
    import dlib
    import face_recognition_models as frm

    from faceveil.pinned import verified_weights

    det = dlib.get_frontal_face_detector()
    sp = dlib.shape_predictor(str(verified_weights(frm.pose_predictor_five_point_model_location())))
    return dlib, det, sp


@lru_cache(maxsize=1)
def _dlib_cnn():
    import dlib
    import face_recognition_models as frm

    from faceveil.pinned import verified_weights

    return dlib.cnn_face_detection_model_v1(str(verified_weights(frm.cnn_face_detector_model_location())))


SELECT_POLICIES = ("largest", "centre")


def _pick(faces: list, h: int, w: int, select: str):
    if select == "largest":
        return max(faces, key=lambda f: f.width() * f.height())
    # "centre": the face whose box centre is nearest the image centre (LFW convention: the
    # labelled person is the one centred in the image; other people may appear larger)
    return min(faces, key=lambda f: ((f.left() + f.right()) / 2 - w / 2) ** 2 + ((f.top() + f.bottom()) / 2 - h / 2) ** 2)


def _resized(img: np.ndarray, s: float) -> tuple[np.ndarray, float, float]:
    """``img`` scaled by about ``s`` (antialiased bilinear) and the exact x and y factors (copy /
    original); the original itself when ``s`` is 1."""
    if s == 1.0:
        return img, 1.0, 1.0
    h, w = img.shape[:2]
    nw, nh = max(1, round(w * s)), max(1, round(h * s))
    out = np.asarray(Image.fromarray(np.ascontiguousarray(img)).resize((nw, nh), Image.BILINEAR, reducing_gap=3.0))
    return out, nw / w, nh / h


def _shrunk(img: np.ndarray, budget: int, upsample: int) -> tuple[np.ndarray, float, float]:
    """``img`` shrunk so that ``upsample`` dlib 2x upsamplings of it stay within ``budget`` pixels
    (see :func:`_resized`); the original itself if it fits."""
    h, w = img.shape[:2]
    return _resized(img, min(1.0, float(np.sqrt(budget / (h * w * 4**upsample)))))


def _rect_to_full(dlib, r, sx: float, sy: float):
    """A dlib rectangle found on a copy scaled by (sx, sy), in the original image's pixels."""
    if sx == 1.0 and sy == 1.0:
        return r

    def fx(v: int) -> int:
        return round((v + 0.5) / sx - 0.5)

    def fy(v: int) -> int:
        return round((v + 0.5) / sy - 0.5)

    return dlib.rectangle(fx(r.left()), fy(r.top()), fx(r.right()), fy(r.bottom()))


def detect(
    img: np.ndarray, fallback: bool = False, source: str = "image", select: str = "largest", cnn: bool = True
) -> Landmarks:
    """5 landmarks of one face: HOG detector at upsample 0, then 1; if both find nothing and
    ``cnn`` is set, dlib's MMOD CNN detector (from ``face_recognition_models``; slow, ~2-7 s/image
    on a CPU, so only a last resort). Each detector sees the image shrunk to its pixel budget
    (:data:`HOG_MAX_PIXELS`, :data:`CNN_MAX_PIXELS`); the box is mapped back and the landmarks
    are found on the full-resolution image. ``select`` picks among several faces ("largest" or
    "centre"); ``n_faces`` of the result tells how many there were. An image with a side below
    :data:`MIN_DETECT_SIDE` raises :class:`FaceveilDataError`. No face:
    :class:`FaceNotFoundError`, or with ``fallback=True`` the :data:`CENTRE_FALLBACK_5`
    centre-crop landmarks, flagged ``status=STATUS_FALLBACK``."""
    if select not in SELECT_POLICIES:
        raise ValueError(f"select must be one of {SELECT_POLICIES}, got {select!r}")
    h, w = img.shape[:2]
    if min(h, w) < MIN_DETECT_SIDE:
        raise FaceveilDataError(
            f"{source}: image of {w}x{h} pixels is too small to detect a face in "
            f"(each side must be at least {MIN_DETECT_SIDE} pixels)"
        )
    dlib, det, sp = _dlib_models()
    found, status, n_faces = None, STATUS_DETECTED, 0
    seen = 0.0  # the finest resolution (detector pixels per image pixel) tried so far
    for up in (0, 1):
        small, sx, sy = _shrunk(img, HOG_MAX_PIXELS, up)
        if sx * 2**up <= seen * 1.01:  # a big image: upsampling a smaller copy sees nothing new
            continue
        seen = sx * 2**up
        faces = list(det(small, up))
        if faces:
            hs, ws = small.shape[:2]
            found = _rect_to_full(dlib, _pick(faces, hs, ws, select), sx, sy)
            status, n_faces = (STATUS_DETECTED if up == 0 else STATUS_UPSAMPLED), len(faces)
            break
    if found is None and cnn:
        if h * w * 4 <= CNN_MAX_PIXELS:  # small images: dlib's own upsampling, as always
            small, sx, sy, up = img, 1.0, 1.0, 1
        else:  # one pass at the budget's resolution (a shrunk copy, or up to 2x enlarged)
            (small, sx, sy), up = _resized(img, float(np.sqrt(CNN_MAX_PIXELS / (h * w)))), 0
        faces = [d.rect for d in _dlib_cnn()(small, up)]
        if faces:
            hs, ws = small.shape[:2]
            found = _rect_to_full(dlib, _pick(faces, hs, ws, select), sx, sy)
            status, n_faces = STATUS_CNN, len(faces)
    if found is not None:
        shape = sp(img, found)
        pts = np.array([[shape.part(i).x, shape.part(i).y] for i in range(5)], dtype=np.float64)
        return Landmarks(pts, (found.left(), found.top(), found.right(), found.bottom()), (h, w), status, n_faces, select)
    if not fallback:
        raise FaceNotFoundError(f"{source}: no face found (dlib HOG detector at upsample 0 and 1" + (", MMOD CNN)" if cnn else ")"))
    pts = CENTRE_FALLBACK_5 * np.array([w, h], dtype=np.float64)
    return Landmarks(pts, (0, 0, w - 1, h - 1), (h, w), STATUS_FALLBACK, 0, select)


# ---------------------------------------------------------------------------------------------
# Chip geometry (dlib get_face_chip_details + extract_image_chips, in numpy)
# ---------------------------------------------------------------------------------------------


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform src -> dst (Umeyama 1991, eqs. 34-43), as a 2x3 matrix."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s0, d0 = src - mu_s, dst - mu_d
    var_s = (s0**2).sum(1).mean()
    cov = d0.T @ s0 / len(src)
    u, d, vt = np.linalg.svd(cov)
    sgn = np.eye(2)
    if np.linalg.det(cov) < 0:
        sgn[1, 1] = -1
    r = u @ sgn @ vt
    c = np.trace(np.diag(d) @ sgn) / var_s
    t = mu_d - c * r @ mu_s
    return np.hstack([c * r, t[:, None]])


def chip_to_image_affine(points: np.ndarray, crop: CropSpec) -> np.ndarray:
    """2x3 affine mapping chip pixel (u, v) -> image pixel (x, y), exactly as dlib computes it."""
    size, pad = crop.size, crop.padding
    tmpl = (pad + TEMPLATE_5) / (2 * pad + 1) * size
    m = similarity_transform(tmpl, np.asarray(points, dtype=np.float64))
    p = m[:, :2] @ np.array([1.0, 0.0])
    angle = np.arctan2(p[1], p[0])
    scale = np.hypot(p[0], p[1])
    centre = m[:, :2] @ np.array([size / 2.0, size / 2.0]) + m[:, 2]
    half = (size * scale - 1.0) / 2.0  # centered_drect: width-- then +-width/2
    l, t, r, b = centre[0] - half, centre[1] - half, centre[0] + half, centre[1] + half
    ca, sa = np.cos(angle), np.sin(angle)

    def rot(x: float, y: float) -> np.ndarray:
        dx, dy = x - centre[0], y - centre[1]
        return np.array([ca * dx - sa * dy + centre[0], sa * dx + ca * dy + centre[1]])

    tl, tr, bl = rot(l, t), rot(r, t), rot(l, b)
    n = size - 1
    a = np.empty((2, 3))
    a[:, 0] = (tr - tl) / n
    a[:, 1] = (bl - tl) / n
    a[:, 2] = tl
    return a


def warp_chips(images: torch.Tensor, affines: np.ndarray, size: int) -> torch.Tensor:
    """Sample chips from a batch of same-size images.

    ``images``: uint8 or float ``[B,H,W,3]`` (0-255); ``affines``: ``[B,2,3]`` chip->image pixel
    maps. Returns uint8 ``[B,size,size,3]`` (values truncated as dlib does).
    """
    b, h, w, _ = images.shape
    x = images.permute(0, 3, 1, 2).to(torch.float64)
    aff = torch.as_tensor(np.asarray(affines), dtype=torch.float64).reshape(b, 2, 3)
    # dlib builds a pyramid when the source rectangle is much bigger than the chip: antialias.
    scale = float(torch.linalg.matrix_norm(aff[:, :, :2], ord=2).max())
    if scale > 2.0:
        f = 2 ** int(np.floor(np.log2(scale)))
        x = F.interpolate(x, scale_factor=1.0 / f, mode="area")
        aff = aff.clone()
        aff[:, :, :2] /= f
        aff[:, :, 2] = (aff[:, :, 2] + 0.5) / f - 0.5
        h, w = x.shape[-2:]
    n_chip = torch.tensor([[2.0 / (size - 1), 0, -1], [0, 2.0 / (size - 1), -1], [0, 0, 1]], dtype=torch.float64)
    n_img = torch.tensor([[2.0 / (w - 1), 0, -1], [0, 2.0 / (h - 1), -1], [0, 0, 1]], dtype=torch.float64)
    aff3 = torch.cat([aff, torch.tensor([[[0, 0, 1.0]]], dtype=torch.float64).expand(b, 1, 3)], dim=1)
    theta = (n_img @ aff3 @ torch.linalg.inv(n_chip))[:, :2]
    grid = F.affine_grid(theta, [b, 3, size, size], align_corners=True)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return out.clamp_(0, 255).floor_().to(torch.uint8).permute(0, 2, 3, 1).contiguous()


#: Images above this many pixels are cropped to each chip's source region before the warp, which
#: works in float64 (24 bytes a pixel: 2.4 GB for a 100 MP photo otherwise). LFW and CelebA images
#: are far below it and warp whole, in batches, exactly as before.
WARP_CROP_PIXELS = 4_000_000


def _chip_region(img: np.ndarray, aff: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The part of ``img`` a chip samples (with a margin, aligned to the antialiasing factor of
    :func:`warp_chips`) and the chip->crop affine."""
    h, w = img.shape[:2]
    corners = aff @ np.array([[0, size - 1, 0, size - 1], [0, 0, size - 1, size - 1], [1, 1, 1, 1]], dtype=np.float64)
    scale = float(np.linalg.norm(aff[:, :2], 2))
    f = 2 ** int(np.floor(np.log2(scale))) if scale > 2.0 else 1
    lo = np.floor(corners.min(1)) - 2 * f
    hi = np.ceil(corners.max(1)) + 2 * f + 1
    x0, y0 = (int(np.clip(v // f * f, 0, n - 2)) for v, n in zip(lo, (w, h), strict=True))
    x1 = int(np.clip(x0 + -(-(hi[0] - x0) // f) * f, x0 + 2, w))
    y1 = int(np.clip(y0 + -(-(hi[1] - y0) // f) * f, y0 + 2, h))
    a = aff.copy()
    a[:, 2] -= (x0, y0)
    return img[y0:y1, x0:x1], a


def chips_from_images(images: Sequence[np.ndarray], landmarks: Sequence[Landmarks], crop: CropSpec) -> np.ndarray:
    """Aligned uint8 chips ``[N,S,S,3]``; images of equal size are warped in one batch, images
    above :data:`WARP_CROP_PIXELS` one by one from the region their chip covers."""
    out = np.empty((len(images), crop.size, crop.size, 3), dtype=np.uint8)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, im in enumerate(images):
        if im.shape[0] * im.shape[1] > WARP_CROP_PIXELS:
            part, aff = _chip_region(im, chip_to_image_affine(landmarks[i].points, crop), crop.size)
            out[i] = warp_chips(torch.from_numpy(np.ascontiguousarray(part))[None], aff[None], crop.size).numpy()[0]
            continue
        groups.setdefault(im.shape[:2], []).append(i)
    for idx in groups.values():
        for s in range(0, len(idx), 256):
            part = idx[s : s + 256]
            batch = torch.from_numpy(np.stack([images[i] for i in part]))
            aff = np.stack([chip_to_image_affine(landmarks[i].points, crop) for i in part])
            out[part] = warp_chips(batch, aff, crop.size).numpy()
    return out


def align_image(
    img: np.ndarray, crop: CropSpec = CropSpec(150, 0.25), fallback: bool = False, source: str = "image", select: str = "largest"
) -> tuple[np.ndarray, Landmarks]:
    """Detect and align one RGB uint8 image: returns (chip ``[S,S,3]`` uint8, landmarks).
    ``source`` names the image in errors; ``lm.selection`` says how the face was chosen."""
    lm = detect(img, fallback=fallback, source=source, select=select)
    return chips_from_images([img], [lm], crop)[0], lm


# ---------------------------------------------------------------------------------------------
# Cached, parallel alignment of whole datasets
# ---------------------------------------------------------------------------------------------


def _detect_file(args: tuple[str, str, bool]) -> tuple[np.ndarray, tuple[int, int, int, int], tuple[int, int], int, str]:
    path, select, cnn = args
    try:
        lm = detect(read_image(path), fallback=False, source=path, select=select, cnn=cnn)
    except FaceNotFoundError as e:
        return np.full((5, 2), np.nan), (0, 0, 0, 0), (0, 0), -1, str(e)
    return lm.points, lm.rect, lm.shape, lm.status, ""


def _workers() -> int:
    return max(1, min(int(os.environ.get("FACEVEIL_WORKERS", os.cpu_count() or 1)), 8))


class _RowStore:
    """Arrays with one row per image file of a dataset, filled on demand and kept on disk.

    ``FACEVEIL_HOME/align/<stem>.index.json`` lists the files; ``<stem>.<field>.npy`` hold the rows.
    Writes go to temporary files renamed into place, each with a sha256 sidecar, so an interrupted run
    never corrupts it, and ``append`` holds a file lock and re-reads the index, so concurrent processes
    (``bench --jobs``) never lose or misalign each other's rows. A store whose index or arrays fail
    their checksum (or have none, or are shorter than the index) is reported, removed and rebuilt.
    """

    def __init__(self, stem: str, fields: Sequence[str]) -> None:
        self.dir = cache_dir("align")
        self.stem = stem
        self.fields = tuple(fields)
        self.index_path = self.dir / f"{stem}.index.json"
        self.files: list[str] = []
        self.row: dict[str, int] = {}
        self._reload()

    def _path(self, field: str) -> Path:
        return self.dir / f"{self.stem}.{field}.npy"

    def get(self, field: str) -> np.ndarray:
        p = self._path(field)
        reason = verify(p)
        if reason is not None:  # changed since _reload checked it
            report_bad(p, reason, "aligned-face cache", "discarded; run again to rebuild it")
            self._reset()
            raise FaceveilCacheError(f"{p}: aligned-face cache {reason}; it was removed, run again to rebuild it")
        return np.load(p, mmap_mode="r")

    def missing(self, files: Sequence[str]) -> list[str]:
        seen: set[str] = set()
        out = []
        for f in files:
            if f not in self.row and f not in seen:
                seen.add(f)
                out.append(f)
        return out

    def _reload(self) -> None:
        """Read the index, checking it and the arrays (a bad file is reported by :func:`load_cache`;
        any bad, missing or short array voids the whole store, which is then rebuilt)."""
        what, action = "aligned-face cache", "discarded with the rest of its store, rebuilding"

        def load_index(p: Path) -> list[str]:
            files = json.loads(p.read_text())
            if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
                raise ValueError("not a list of file names")
            return files

        files = load_cache(self.index_path, load_index, what + " index", action) or []
        for f in self.fields if files else ():  # arrays without an index are an interrupted append's
            p = self._path(f)
            exists = p.is_file()
            rows = load_cache(p, lambda q: len(np.load(q, mmap_mode="r")), what, action)
            if rows is None or rows < len(files):
                if rows is not None or not exists:
                    report_bad(p, "is missing" if rows is None else f"has {rows} rows for {len(files)} indexed files", what,
                               action)
                self._reset()
                files = []
                break
        self.files = files
        self.row = {f: i for i, f in enumerate(self.files)}

    def _reset(self) -> None:
        for p in [self.index_path, *map(self._path, self.fields)]:
            discard(p)
        self.files, self.row = [], {}

    def append(self, files: list[str], fields: dict[str, np.ndarray]) -> None:
        if not files:
            return
        if set(fields) != set(self.fields):
            raise ValueError(f"{self.stem}: fields {sorted(fields)} != {sorted(self.fields)}")
        with file_lock(self.dir / f"{self.stem}.lock"):
            self._reload()  # another process may have appended since we read the index
            new = [i for i, f in enumerate(files) if f not in self.row]
            n = len(self.files)
            for name, rows in fields.items():
                # rows beyond the index are an interrupted append's: dropped
                old = np.load(self._path(name))[:n] if n else None
                arr = rows[new] if old is None else np.concatenate([old, rows[new]])
                write_atomically(self._path(name), lambda p, a=arr: np.save(p, a), checksum=True)
            self.files = self.files + [files[i] for i in new]
            self.row = {f: i for i, f in enumerate(self.files)}
            write_atomically(self.index_path, lambda p: p.write_text(json.dumps(self.files)), checksum=True)

    def rows(self, files: Sequence[str]) -> np.ndarray:
        return np.array([self.row[f] for f in files], dtype=np.int64)


def _store_stem(name: str, root: Path, *extra: str) -> str:
    return "-".join([name, config_hash(str(Path(root).resolve()), ALIGN_VERSION, length=8, precision=False), *extra])


def dataset_landmarks(
    root: Path, rel_paths: Sequence[str], name: str, progress: bool = True, select: str = "largest"
) -> dict[str, np.ndarray]:
    """5-point landmarks of image files under ``root`` (detected in parallel once, then cached per
    dataset). Returns arrays ``points [N,5,2]``, ``rects [N,4]``, ``shapes [N,2]`` and ``status [N]``
    (0 detected, 1 detected with upsampling, 3 by the CNN detector, -1 no face; the centre-crop
    fallback is decided later)."""
    store = _RowStore(_store_stem(name, root, select, "landmarks"), ("points", "rects", "shapes", "status"))
    todo = store.missing(rel_paths)
    if todo:
        jobs = [(str(Path(root) / p), select, True) for p in todo]
        n = len(jobs)
        pts = np.empty((n, 5, 2))
        rects = np.empty((n, 4), dtype=np.int64)
        shapes = np.empty((n, 2), dtype=np.int64)
        status = np.empty(n, dtype=np.int8)
        workers = _workers()
        with tqdm(total=n, desc=f"detecting faces ({name})", disable=not progress, unit="img") as bar:
            if workers > 1 and n > 64:
                # forked workers run the HOG detector only: dlib's CNN detector uses dlib's thread pool,
                # which a forked child inherits without its threads (a worker hung forever once the
                # parent had used it); the few HOG misses go to the CNN here, in the parent
                with ProcessPoolExecutor(workers) as ex:
                    for i, res in enumerate(ex.map(_detect_file, [(p, sel, False) for p, sel, _ in jobs], chunksize=32)):
                        pts[i], rects[i], shapes[i], status[i], _ = res
                        bar.update()
                for i in np.flatnonzero(status == -1):
                    pts[i], rects[i], shapes[i], status[i], _ = _detect_file(jobs[i])
            else:
                for i, job in enumerate(jobs):
                    pts[i], rects[i], shapes[i], status[i], _ = _detect_file(job)
                    bar.update()
        store.append(todo, dict(points=pts, rects=rects, shapes=shapes, status=status))
    r = store.rows(rel_paths)
    return {k: np.asarray(store.get(k)[r]) for k in ("points", "rects", "shapes", "status")}


def aligned_chips(
    root: Path, rel_paths: Sequence[str], name: str, crop: CropSpec, fallback: bool = True, progress: bool = True,
    select: str = "largest",
) -> tuple[np.ndarray, np.ndarray]:
    """Aligned uint8 chips ``[N,S,S,3]`` of image files under ``root`` plus a status per image:
    0 detected, 1 detected with upsampling, 3 by the CNN detector, 2 no face -> centre-crop
    fallback (only with ``fallback=True``; otherwise :class:`FaceNotFoundError`). Cached per
    (dataset, face-selection policy, crop)."""
    lmd = dataset_landmarks(root, rel_paths, name, progress, select)
    status = lmd["status"].copy()
    if (status < 0).any():
        if not fallback:
            bad = [rel_paths[i] for i in np.flatnonzero(status < 0)]
            raise FaceNotFoundError(f"no face found in {len(bad)} image(s), e.g. {Path(root) / bad[0]}")
        status[status < 0] = STATUS_FALLBACK
    store = _RowStore(_store_stem(name, root, select, "chips" + crop.key()), ("chips",))
    todo = store.missing(rel_paths)
    if todo:
        lm_todo = dataset_landmarks(root, todo, name, progress=False, select=select)
        chips = np.empty((len(todo), crop.size, crop.size, 3), dtype=np.uint8)
        with tqdm(total=len(todo), desc=f"warping chips {crop.key()}", disable=not progress, unit="img") as bar:
            for s in range(0, len(todo), 512):
                part = range(s, min(s + 512, len(todo)))
                imgs = [read_image(Path(root) / todo[i]) for i in part]
                lms = []
                for i, im in zip(part, imgs, strict=True):
                    if lm_todo["status"][i] < 0:
                        h, w = im.shape[:2]
                        pts = CENTRE_FALLBACK_5 * np.array([w, h], dtype=np.float64)
                        lms.append(Landmarks(pts, (0, 0, w - 1, h - 1), (h, w), STATUS_FALLBACK))
                    else:
                        lms.append(Landmarks(lm_todo["points"][i], tuple(lm_todo["rects"][i]),
                                             tuple(lm_todo["shapes"][i]), int(lm_todo["status"][i])))
                chips[s : s + len(part)] = chips_from_images(imgs, lms, crop)
                bar.update(len(part))
        store.append(todo, dict(chips=chips))
    return np.asarray(store.get("chips")[store.rows(rel_paths)]), status


def to_tensor(chips: np.ndarray) -> torch.Tensor:
    """uint8 ``[N,H,W,3]`` -> float32 ``[N,3,H,W]`` in [0,1]."""
    return torch.from_numpy(np.ascontiguousarray(chips)).permute(0, 3, 1, 2).float().div_(255.0)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float ``[N,3,H,W]`` in [0,1] -> uint8 ``[N,H,W,3]`` (rounded)."""
    return x.detach().clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
