"""faceveil's own protection, ``keyed-projection``: the keyed map, its keys, and what it does on real LFW faces."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
import torch

from faceveil.data.align import to_tensor
from faceveil.defenses import get_defense
from faceveil.defenses.keyed_projection import CONTEXT, KeyedProjection, projection
from faceveil.errors import FaceveilDataError
from faceveil.keys import SecretKey
from faceveil.metrics.protection import linkage_scores, renewability, threshold_at_fmr
from faceveil.metrics.unlinkability import unlinkability
from faceveil.metrics.verification import best_threshold
from faceveil.models.base import OperatingPoint, pairwise_distance
from faceveil.system import ProtectedSystem
from faceveil.system.load import load_client


@pytest.fixture(scope="module")
def chips(lfw_sample):
    return to_tensor(lfw_sample[1][:6])


@pytest.fixture(scope="module")
def devtest(dlib_model, lfw):
    """Raw dlib embeddings of LFW ``pairsDevTest.txt``'s 1,549 images, their subjects, and the 1,000 pairs as
    row indices into them (cached embeddings)."""
    from faceveil.models.embed import dataset_embeddings

    p = lfw.pairs("devtest")
    idx = np.unique(np.concatenate([p.a, p.b]))
    emb, _, _ = dataset_embeddings(dlib_model, lfw.dataset(), idx, progress=False)
    row = {int(i): r for r, i in enumerate(idx)}
    a = np.array([row[int(i)] for i in p.a])
    b = np.array([row[int(i)] for i in p.b])
    return emb.float(), lfw.dataset().labels[idx], a, b, p.same


def templates(d: KeyedProjection, f: torch.Tensor, key: SecretKey) -> torch.Tensor:
    k = d.with_key(key)
    return k.encode(f, k.matrix())


def accuracy(ea: torch.Tensor, eb: torch.Tensor, same: np.ndarray) -> float:
    return best_threshold(pairwise_distance(ea, eb, "cosine").double().numpy(), same)[1]


def test_protect_is_the_sign_of_a_keyed_gaussian_projection_of_the_embedding(chips, dlib_model):
    key = SecretKey.generate()
    d = get_defense("keyed-projection", bits=256, key=key, recognizer=dlib_model)
    t = d.protect(chips)
    f = dlib_model.embed(chips)
    w = torch.randn(256, 128, generator=key.generator(CONTEXT), dtype=torch.float64).float()
    assert torch.equal(t, torch.where(f @ w.T >= 0, 1.0, -1.0))  # written out independently
    assert t.shape == (len(chips), 256) and t.dtype == torch.float32
    assert torch.equal(d.protect(chips, torch.Generator().manual_seed(5)), t)  # a function of the key only
    other = d.with_key(SecretKey.generate()).protect(chips)
    assert (other != t).float().mean() > 0.4  # another key: another template (half the bits differ)
    rot = get_defense("keyed-projection", bits=0, key=key, recognizer=dlib_model)
    q = rot.matrix()
    assert torch.allclose(q @ q.T, torch.eye(128), atol=1e-5)
    assert torch.allclose(rot.protect(chips).norm(dim=1), torch.ones(len(chips)), atol=1e-5)


def test_keys_stay_secret_and_parameters_are_checked(dlib_model):
    d = get_defense("keyed-projection", recognizer=dlib_model)
    assert "key" not in d.config() and "key" not in d.public_params()
    assert d.key != get_defense("keyed-projection", recognizer=dlib_model).key  # fresh from the CSPRNG each time
    r = get_defense("keyed-projection", research_key_seed=3, recognizer=dlib_model)
    assert r.key == SecretKey.from_research_seed(3) and r.config()["research_key_seed"] == 3
    for bad in ({"bits": 8}, {"bits": True}, {"bits": 1.5}, {"key_scope": "team"}, {"research_key_seed": "1"}):
        with pytest.raises(ValueError):
            get_defense("keyed-projection", recognizer=dlib_model, **bad)
    with pytest.raises(ValueError, match="not both"):
        get_defense("keyed-projection", research_key_seed=1, key=SecretKey.generate(), recognizer=dlib_model)
    with pytest.raises(TypeError):
        get_defense("keyed-projection", key=b"0" * 32, recognizer=dlib_model)
    with pytest.raises(FaceveilDataError, match="NaN"):
        d.encode(torch.full((2, 128), float("nan")), d.matrix())
    with pytest.raises(FaceveilDataError, match="no persistent client key"):
        get_defense("blur").with_key(SecretKey.generate())


def test_the_population_leak_gives_every_face_its_own_key_and_the_deployment_scope_one(chips, dlib_model):
    two = torch.cat([chips[:1], chips[:1]])
    user = get_defense("keyed-projection", bits=512, research_key_seed=0, recognizer=dlib_model)
    g = torch.Generator().manual_seed(0)
    t = user.population_leak(two, "database", g)
    assert (t[0] != t[1]).float().mean() > 0.4  # the same face, two users' keys: unrelated templates
    dep = get_defense("keyed-projection", bits=512, key_scope="deployment", research_key_seed=0, recognizer=dlib_model)
    assert torch.equal(dep.population_leak(two, "channel", g), dep.protect(two))


def test_whitebox_map_is_bpda_with_eot_over_unknown_keys(chips, dlib_model):
    user = get_defense("keyed-projection", bits=256, research_key_seed=0, recognizer=dlib_model)
    x = chips[:2].clone().requires_grad_(True)
    a, b = user.whitebox_forward(x), user.whitebox_forward(x)
    assert not torch.equal(a, b)  # a fresh key guess per call (EOT)
    a.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0  # straight-through sign (BPDA)
    dep = get_defense("keyed-projection", bits=256, key_scope="deployment", research_key_seed=0, recognizer=dlib_model)
    y = chips[:2].clone().requires_grad_(True)
    z = dep.whitebox_forward(y)
    assert torch.equal(z.detach(), dep.protect(chips[:2]))  # the known key: the real map, values exact
    z.sum().backward()
    assert y.grad.abs().sum() > 0


def test_lfw_accuracy_of_templates_is_within_two_points_of_the_unprotected_embedding(devtest):
    emb, _, a, b, same = devtest
    base = accuracy(emb[a], emb[b], same)
    d = get_defense("keyed-projection", bits=1024)
    key = SecretKey.from_research_seed(0)
    acc = accuracy(templates(d, emb[a], key), templates(d, emb[b], key), same)
    rot = get_defense("keyed-projection", bits=0)
    acc_rot = accuracy(templates(rot, emb[a], key), templates(rot, emb[b], key), same)
    short = get_defense("keyed-projection", bits=64)
    acc_short = accuracy(templates(short, emb[a], key), templates(short, emb[b], key), same)
    # measured on these 1,000 pairs: dlib cosine 99.0 %; keys 0-2: m=1024 97.8-98.2 %, rotation 99.0 %, m=64 82-86 %
    assert base > 0.97
    assert base - acc <= 0.02, (base, acc)
    assert abs(acc_rot - base) < 1e-9  # a rotation of normalised embeddings keeps every cosine
    assert acc_short < acc - 0.03  # the template length is the utility knob


def test_templates_under_two_keys_are_unlinkable_and_a_key_change_revokes_old_ones(devtest):
    emb, labels, a, b, same = devtest
    d = get_defense("keyed-projection", bits=1024)
    ka, kb = SecretKey.from_research_seed(1), SecretKey.from_research_seed(2)
    ta, tb = templates(d, emb, ka), templates(d, emb, kb)
    s = linkage_scores(ta.numpy(), tb.numpy(), labels, mated="subject", score="cosine")
    linked = unlinkability(s.mated, s.nonmated).d_sys
    s0 = linkage_scores(emb.numpy(), emb.numpy(), labels, mated="subject", score="cosine")
    plain = unlinkability(s0.mated, s0.nonmated).d_sys
    # measured: across two keys 0.039-0.048 (4 key pairs, 1,966 mated scores): the
    # histogram estimator's own bias at this many scores, not linkage (templates under two keys are independent)
    assert plain > 0.9 and linked < 0.08, (plain, linked)
    # renewal: old (key A) templates against the renewed system (key B), at its FMR 1e-3 threshold
    dist = pairwise_distance(tb[a[~same]], tb[b[~same]], "cosine").double().numpy()
    cross = labels[:, None] != labels[None, :]
    imp = (1 - tb @ tb.T / 1024)[torch.from_numpy(cross)].double().numpy()
    t = threshold_at_fmr(imp, 1e-3)
    old = pairwise_distance(ta[a[same]], tb[b[same]], "cosine").double().numpy()
    new = pairwise_distance(tb[a[same]], tb[b[same]], "cosine").double().numpy()
    assert renewability(old, t) <= 0.01 and renewability(new, t) > 0.8, (renewability(old, t), renewability(new, t))
    assert (dist <= t).mean() <= 0.01


def test_a_system_client_protects_under_the_users_key_and_bundles_hold_no_key(tmp_path, chips, dlib_model):
    key = SecretKey.generate()
    d = get_defense("keyed-projection", bits=512, recognizer=dlib_model)
    system = ProtectedSystem.frozen(d, OperatingPoint("cosine", 0.3, "test", 0.0))
    user = system.client(key=key)
    payload = user.protect_chips(chips[:2])
    assert torch.equal(payload, d.with_key(key).protect(chips[:2]))
    assert not torch.equal(payload, system.client().protect_chips(chips[:2]))  # the system's own key differs
    # the server decides from templates alone: the same face under the same key matches, under another not
    server = system.server()
    assert server.verify(payload[:1], payload[:1])[0].accepted
    assert not server.verify(system.client(key=SecretKey.generate()).protect_chips(chips[:1]), payload[:1])[0].accepted
    path = system.save(tmp_path / "kp.fvsys")
    blob = b"".join(zipfile.ZipFile(path).read(n) for n in zipfile.ZipFile(path).namelist())
    for k in (key, d.key):
        raw = k._key
        assert raw not in blob and raw.hex().encode() not in blob
    again = load_client(path, key=key)
    assert torch.equal(again.protect_chips(chips[:2]), payload)


def test_protect_command_needs_a_key_file_and_uses_it(tmp_path, lfw_sample):
    from faceveil.defenses.cli_support import protect_files

    sub = lfw_sample[0]
    files = [sub.root / f for f in sub.files[:2]]
    with pytest.raises(FaceveilDataError, match="key-file"):
        protect_files("keyed-projection", {"bits": "256"}, files, tmp_path / "none")
    keyfile = tmp_path / "user.key"
    protect_files("keyed-projection", {"bits": "256"}, files, tmp_path / "a", key_file=keyfile)
    protect_files("keyed-projection", {"bits": "256"}, files, tmp_path / "b", key_file=keyfile)
    a = sorted((tmp_path / "a").glob("*.npy"))
    b = sorted((tmp_path / "b").glob("*.npy"))
    assert a and [np.load(p).tolist() for p in a] == [np.load(p).tolist() for p in b]  # one key, one template
    assert oct(keyfile.stat().st_mode & 0o777) == "0o600"


def test_projection_draws_one_matrix_per_face_in_a_batch():
    w = projection(64, 8, torch.Generator().manual_seed(0), batch=3)
    assert w.shape == (3, 64, 8) and not torch.equal(w[0], w[1])
    q = projection(0, 8, torch.Generator().manual_seed(0), batch=2)
    assert torch.allclose(q @ q.transpose(1, 2), torch.eye(8).expand(2, 8, 8), atol=1e-5)


def test_cli_parameters_of_an_optional_integer_parse():
    from faceveil.defenses.cli_support import parse_params

    assert parse_params("keyed-projection", {"research_key_seed": "7", "bits": "512", "key_scope": "deployment"}) == \
        {"research_key_seed": 7, "bits": 512, "key_scope": "deployment"}
    assert parse_params("keyed-projection", {"research_key_seed": "none"}) == {"research_key_seed": None}
    with pytest.raises(ValueError, match="research_key_seed='x' is not a valid int"):
        parse_params("keyed-projection", {"research_key_seed": "x"})
