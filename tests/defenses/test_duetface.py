"""DuetFace: the channel split against an independent block DCT (scipy) on real faces, the client's
channels never sent, the masks, shapes and storage, determinism, bad inputs, and a short-trained server
that recognises real LFW pairs from what the client sends."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.fft
import torch
import torch.nn.functional as F

from faceveil.data.align import to_tensor
from faceveil.defenses import get_defense
from faceveil.defenses.duetface import (
    TFACE_CLIENT_CHANNELS,
    TFACE_SUB_CHS,
    hull_mask,
    partial_block_idct,
    roi_masks,
    rowmajor_name,
    ycbcr_frequency_channels,
)
from faceveil.errors import FaceveilDataError
from faceveil.keys import os_generator, research_generator

#: JPEG full-range YCbCr (ITU-T T.871), written out independently of the module
JPEG_YCBCR = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])


@pytest.fixture(scope="module")
def faces(lfw_sample):
    return to_tensor(lfw_sample[1][:6])


@pytest.fixture(scope="module")
def duet(dlib_model):
    return get_defense("duetface", recognizer=dlib_model)


@pytest.fixture(scope="module")
def sent(duet, faces):
    return duet.protect(faces)


def reference_spectrum(faces: torch.Tensor, size: int = 112) -> np.ndarray:
    """TFace's ``_images_to_dct`` written out with numpy/scipy: [B,3,size,size,8,8] block spectra of the
    x8-upscaled, centred YCbCr face (spectrum [u, v]: u vertical, v horizontal frequency)."""
    x = F.interpolate(faces.double(), size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    ycc = np.einsum("cd,bdhw->bchw", JPEG_YCBCR, x.numpy() * 255.0) + np.array([0.0, 128, 128])[None, :, None, None] - 128
    up = F.interpolate(torch.from_numpy(ycc), scale_factor=8, mode="bilinear", align_corners=False).numpy()
    b = len(up)
    blocks = up.reshape(b, 3, size, 8, size, 8).transpose(0, 1, 2, 4, 3, 5)
    return scipy.fft.dctn(blocks, axes=(-2, -1), norm="ortho")


def test_tface_default_split():
    """TFace's SUB_CHS [0,1,2,3,4,5,8,9,16,24] (row-major 8u+v) in faceveil's names."""
    assert [rowmajor_name(k) for k in TFACE_SUB_CHS] == ["DC", "AC01", "AC02", "AC03", "AC04", "AC05", "AC10", "AC11",
                                                         "AC20", "AC30"]
    assert TFACE_CLIENT_CHANNELS == "DC,AC01,AC02,AC03,AC04,AC05,AC10,AC11,AC20,AC30"
    with pytest.raises(ValueError):
        rowmajor_name(64)


def test_server_channels_equal_an_independent_block_dct(duet, faces, sent):
    """Every sent channel, at blocks across the face, equals scipy's orthonormal DCT of the explicitly
    upscaled YCbCr block, in TFace's order (Y, Cb, Cr; ascending row-major index of the 54 others)."""
    ref = reference_spectrum(faces)
    server_rm = sorted(set(range(64)) - set(TFACE_SUB_CHS))
    assert len(server_rm) == 54 and duet.n_server_channels == 162
    want = np.stack([ref[:, c, :, :, k // 8, k % 8] for c in range(3) for k in server_rm], 1)  # [B,162,112,112]
    got = sent[:, :162].double().numpy()
    scale = np.abs(want).max()
    for bi, bj in [(0, 0), (30, 75), (56, 56), (90, 20), (111, 111)]:
        np.testing.assert_allclose(got[:, :, bi, bj], want[:, :, bi, bj], rtol=0, atol=2e-5 * scale)
    assert np.abs(got - want).max() <= 2e-5 * scale
    assert duet.server_channel_names()[:3] == ["Y:AC06", "Y:AC07", "Y:AC12"]


def test_frequency_channels_equal_scipy_for_all_64(faces):
    ref = reference_spectrum(faces[:2])
    f = ycbcr_frequency_channels(faces[:2].double(), 112).numpy()  # [B,3,64,112,112], zigzag order
    from faceveil.defenses.faceobfuscator import ZIGZAG

    want = np.stack([ref[..., u, v] for u, v in ZIGZAG], 2)
    # float64 throughout; the tolerance is the 6-digit rounding of T.871's constants in the reference
    np.testing.assert_allclose(f, want, rtol=0, atol=2e-6 * np.abs(want).max())


def test_client_channels_are_never_sent(duet, faces, sent):
    """No client channel is among the sent ones, and the sent frequency channels do not change when
    the face's brightness and colour are offset: the DC of Y, Cb and Cr (the face at 1/8 scale) cannot
    be recovered from them."""
    names = duet.server_channel_names()
    client = set(TFACE_CLIENT_CHANNELS.split(","))
    assert len(names) == 162 and not any(n.split(":")[1] in client for n in names)
    x = faces * 0.8 + 0.1
    shifted = x + torch.tensor([0.06, -0.04, 0.03]).view(1, 3, 1, 1)  # stays in [0, 1]
    a, b = duet.protect(x)[:, :162], duet.protect(shifted)[:, :162]
    assert (a - b).abs().max() <= 1e-5 * a.abs().max()
    low, _ = duet.split_channels(x)
    low2, _ = duet.split_channels(shifted)
    assert (low[:, :, 0] - low2[:, :, 0]).abs().mean() > 1.0  # ... while the client's DC moved


def test_the_client_keeps_the_visual_information(duet, faces):
    """The 10 client channels carry almost all of the energy and the face (their inverse DCT is the
    face, slightly smoothed); the 54 sent ones are a small high-frequency residue."""
    low, high = duet.split_channels(faces)
    assert low.abs().sum() / (low.abs().sum() + high.abs().sum()) > 0.99
    img = duet.client_image(low)
    x = F.interpolate(faces, size=img.shape[-2:], mode="bilinear", antialias=True)
    psnr = 10 * torch.log10(1 / ((img - x) ** 2).mean())
    assert psnr > 24, float(psnr)


def test_partial_idct_inverts_the_block_dct():
    from faceveil.defenses.faceobfuscator import block_dct

    img = torch.rand(2, 1, 32, 24, dtype=torch.float64)
    c = block_dct(img)
    torch.testing.assert_close(partial_block_idct(c, list(range(64))), img, atol=1e-12, rtol=0)
    low = partial_block_idct(c[:, :3], [0, 1, 2])
    torch.testing.assert_close(block_dct(low)[:, :3], c[:, :3], atol=1e-12, rtol=0)
    assert block_dct(low)[:, 3:].abs().max() < 1e-12


def test_masks_are_normalised_attention_inside_the_face(duet, faces, sent):
    m = sent[:, 162:]
    assert m.shape == (6, 4, 112, 112) and m.min() >= 0 and m.max() <= 1 + 1e-6
    assert (m.amax(dim=(2, 3)) > 0.9).all()  # each min-max normalised (max 1 before the packing upsample)
    roi = roi_masks(faces, 0.25, 112)
    frac = roi.mean(dim=(1, 2, 3))
    assert ((frac > 0.3) & (frac < 0.8)).all(), frac  # the face hull, not the whole chip
    # the finest mask (35x35) vanishes outside the face: corners of the chip
    assert m[:, 0, :6, :6].max() < 0.05 and m[:, 0, -6:, -6:].max() < 0.05
    free = get_defense("duetface", roi=False, recognizer=duet.recognizer).protect(faces)[:, 162:]
    assert free[:, 0, :6, :6].max() > m[:, 0, :6, :6].max()


def test_hull_mask():
    pts = np.array([[2.0, 2.0], [7.0, 2.0], [7.0, 7.0], [2.0, 7.0], [4.0, 4.0]])
    m = hull_mask(pts, 10)
    assert m.sum() == 36 and m[2, 2] == 1 and m[7, 7] == 1 and m[1, 5] == 0 and m[8, 5] == 0
    assert hull_mask(np.array([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]), 5).sum() == 25  # no area: no crop


def test_recover_overlays_the_mean_mask(duet, sent):
    r = duet.recover(sent)
    torch.testing.assert_close(r, sent[:, :162] * (1 + sent[:, 162:].mean(1, keepdim=True)))
    with pytest.raises(ValueError, match="transmitted"):
        duet.recover(sent[:, :162])


def test_shapes_storage_and_no_randomness(duet, faces, sent, dlib_model):
    assert sent.shape == (6, 166, 112, 112) and sent.dtype == torch.float32 and torch.isfinite(sent).all()
    assert duet.storage_bytes() == 166 * 112 * 112 * 4 and duet.stored_shape() == (166, 112, 112)
    # deterministic by design (TFace has no random step): any generator, or none, gives the same bits
    assert not duet.stochastic
    assert torch.equal(duet.protect(faces, research_generator(0, 0, 1)), sent)
    assert torch.equal(duet.protect(faces, os_generator()), sent)
    plain = get_defense("duetface", interaction=False, recognizer=dlib_model)
    p = plain.protect(faces)
    assert p.shape == (6, 162, 112, 112) and plain.storage_bytes() == 162 * 112 * 112 * 4
    assert torch.equal(p, sent[:, :162]) and torch.equal(plain.recover(p), p)
    small = get_defense("duetface", size=56, recognizer=dlib_model)
    assert small.protect(faces[:1]).shape == (1, 166, 56, 56)


def test_bad_inputs(duet, faces):
    with pytest.raises(FaceveilDataError):
        duet.protect(torch.full_like(faces[:1], float("nan")))
    with pytest.raises(FaceveilDataError):
        duet.protect(faces[:1, :2])
    with pytest.raises(FaceveilDataError):
        duet.protect(faces[:1] * 3)
    with pytest.raises(TypeError):
        duet.protect(faces[:1], rng=1)


@pytest.mark.parametrize("kw,msg", [
    ({"client_channels": "AC01,AC10"}, "must include DC"),
    ({"client_channels": "DC,AC99"}, "unknown frequency channel"),
    ({"client_channels": " , "}, "at least one"),
    ({"client_channels": "DC,AC01,DC"}, "repeat"),
    ({"client_channels": "all"}, "unknown frequency channel"),
    ({"size": 8}, "size"), ({"size": 112.5}, "size"), ({"size": True}, "size"),
    ({"client_layers": "res3,nope"}, "unknown client_layers"),
    ({"client_layers": ""}, "at least one unit"),
    ({"interaction": "yes"}, "booleans"),
])
def test_parameter_validation(kw, msg, dlib_model):
    with pytest.raises(ValueError, match=msg):
        get_defense("duetface", recognizer=dlib_model, **kw)


def test_every_channel_on_the_client_is_refused(dlib_model):
    from faceveil.defenses.faceobfuscator import CHANNEL_NAMES

    with pytest.raises(ValueError, match="no channel for the server"):
        get_defense("duetface", client_channels=",".join(CHANNEL_NAMES), recognizer=dlib_model)


def _auc(pos: np.ndarray, neg: np.ndarray) -> float:
    return float((pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean())


def short_trained_aucs(d, cfg, data_root, lfw, n: int = 30) -> tuple[float, float, dict]:
    """Verification AUC (cosine) on ``n`` same + ``n`` different LFW devtest pairs (identity-disjoint from the
    public training faces) of the student distilled with ``cfg`` on ``d``'s server input, and of the same
    student before training (its initialisation), and the training log."""
    from faceveil.models.base import CropSpec
    from faceveil.train.distill import _protected_batch, make_student, train_student

    torch.set_num_threads(1)
    student, log = train_student(d, cfg, data_root, progress=False)
    p = lfw.pairs("devtest")
    sel = np.concatenate([np.where(p.same)[0][:n], np.where(~p.same)[0][:n]])
    idx = np.unique(np.concatenate([p.a[sel], p.b[sel]]))
    chips, _ = lfw.dataset().subset(idx, name="lfw").chips(CropSpec(150, 0.25), progress=False)
    pos = {int(i): k for k, i in enumerate(idx)}
    with torch.no_grad():
        r = d.recover(d.protect(to_tensor(chips), research_generator(0, 0, 9)))
        torch.manual_seed(cfg.seed)  # train_student's initialisation
        fresh = make_student(_protected_batch(d, to_tensor(chips[:2]), torch.Generator())[0], cfg, 128, d).eval()
        aucs = []
        for model in (student.eval(), fresh):
            e = torch.cat([model(r[i : i + 16]) for i in range(0, len(r), 16)])
            s = F.cosine_similarity(e[[pos[int(i)] for i in p.a[sel]]], e[[pos[int(i)] for i in p.b[sel]]]).numpy()
            aucs.append(_auc(s[p.same[sel]], s[~p.same[sel]]))
    return aucs[0], aucs[1], log


def test_a_short_trained_server_recognises_real_pairs(dlib_model, data_root, lfw):
    """The adapted student, trained for 12 steps on public faces through DuetFace (56 px faces: the same
    pipeline at a quarter of the cost), verifies held-out LFW pairs from what is sent well above chance
    and above the same student before training. Fails if the transform destroys the identity."""
    from faceveil.train.distill import distill_config

    d = get_defense("duetface", size=56, recognizer=dlib_model)
    # step-bounded (12 steps of 16, one epoch), not time-bounded: the same student whatever the load
    cfg = distill_config("ci", train_images=192, batch_size=16, max_seconds=None)
    trained, untrained, log = short_trained_aucs(d, cfg, data_root, lfw)
    assert log["steps"] == 12 and log["final_loss"] < log["first_loss"]
    # measured: 0.83; the untrained student (its initialisation) 0.64
    assert trained > 0.75 and trained > untrained + 0.1, (trained, untrained, log)


@pytest.mark.slow
def test_the_default_configuration_trains_a_server(dlib_model, data_root, lfw):
    """As above at the default 112 px faces, for 32 steps of 16 (several minutes on one core)."""
    from faceveil.train.distill import distill_config

    d = get_defense("duetface", recognizer=dlib_model)
    cfg = distill_config("ci", train_images=512, batch_size=16, max_seconds=None)
    trained, untrained, log = short_trained_aucs(d, cfg, data_root, lfw)
    # measured: 0.98; the untrained student 0.63
    assert trained > 0.9 and trained > untrained + 0.2, (trained, untrained, log)
