"""Keys and randomness: protection noise comes from the OS CSPRNG and cannot be regenerated from public
inputs; research seeds are explicit; secret keys are never shown, pickled or stored readable by others."""

from __future__ import annotations

import json
import os
import pickle
import stat

import numpy as np
import pytest
import torch

from faceveil.defenses import get_defense
from faceveil.defenses.cli_support import protect_files
from faceveil.defenses.laplace import laplace_noise
from faceveil.keys import FaceveilKeyError, Randomness, SecretKey, os_generator, research_generator

# the seeds an attacker with only the code would try: the old public default (0), small integers, years
PUBLIC_SEEDS = [*range(0, 64), 1234, 2024, 2025, 2026, 12345, 42424242]


def test_os_generators_differ_and_research_generators_repeat():
    a, b = (torch.rand(8, generator=os_generator()) for _ in range(2))
    assert not torch.equal(a, b)
    r = Randomness.research(5)
    assert torch.equal(torch.rand(8, generator=r.batch(3, 1)), torch.rand(8, generator=research_generator(5, 3, 1)))
    assert not torch.equal(torch.rand(8, generator=r.batch(3, 1)), torch.rand(8, generator=r.batch(4, 1)))
    c = Randomness.csprng()
    assert not torch.equal(torch.rand(8, generator=c.batch(0)), torch.rand(8, generator=c.batch(0)))
    assert c.describe() == {"randomness": "os-csprng"} and r.describe()["research_seed"] == 5
    with pytest.raises(Exception, match="integer"):
        Randomness.research("5")  # type: ignore[arg-type]


def test_stochastic_defense_without_generator_draws_fresh_noise():
    """The Python API's default (no generator) is fresh CSPRNG noise per call, not a fixed seed."""
    d = get_defense("noise", sigma=8.0)
    x = torch.full((2, 3, 150, 150), 0.5)
    a, b = d.protect(x), d.protect(x)
    assert not torch.equal(a, b)
    assert not torch.equal(a[0], a[1])  # and not the same noise for every image of a batch
    with pytest.raises(TypeError, match="torch.Generator"):
        d.protect(x, 0)  # type: ignore[arg-type]


def _image(lfw, i: int = 0):
    return lfw.root / lfw.dataset().files[i]


def _clean_chip(path, crop):
    from faceveil.data.align import align_image, to_tensor
    from faceveil.data.io import read_image

    return to_tensor(align_image(read_image(path), crop)[0][None])


def test_laplace_noise_cannot_be_regenerated_from_public_inputs(tmp_path, lfw, data_root, dlib_model):
    """Before: ``faceveil protect`` seeded image i from (seed 0, i), so anyone with the code removed the
    Laplace noise exactly. Now two runs differ, and no public seed regenerates the noise; with an explicit
    research seed it does (so this test would catch a fixed seed)."""
    files = [_image(lfw, 0), _image(lfw, 1)]
    d = get_defense("laplace", recognizer=dlib_model)
    clean = torch.stack([d.clean_features(_clean_chip(f, dlib_model.crop))[0].clamp(-d.c, d.c) for f in files])

    def attack_error(outs: list) -> float:
        """The best any public seed does at removing the noise: max |f_guess - f| of the best guess."""
        best = np.inf
        for s in PUBLIC_SEEDS:
            for i, o in enumerate(outs):
                guess = torch.from_numpy(o) - laplace_noise((1, 128), d.scale, research_generator(s, i), torch.float32)[0]
                best = min(best, float((guess - clean[i]).abs().max()))
        return best

    r1 = protect_files("laplace", {}, files, tmp_path / "a", data_dir=data_root)
    r2 = protect_files("laplace", {}, files, tmp_path / "b", data_dir=data_root)
    o1, o2 = ([np.load(p) for p in r.written] for r in (r1, r2))
    assert not np.array_equal(o1[0], o2[0]) and not np.array_equal(o1[0], o1[1])
    assert attack_error(o1) > 0.5 * d.scale  # nothing close: the noise scale is 0.7
    m = json.loads(r1.manifest.read_text())
    assert m["randomness"] == "os-csprng" and "research_seed" not in m
    assert [f["status"] for f in m["files"]] == ["written", "written"]

    research = protect_files("laplace", {}, files, tmp_path / "c", Randomness.research(7), data_dir=data_root)
    assert attack_error([np.load(p) for p in research.written]) < 1e-5  # a known seed gives the face's features back
    assert json.loads(research.manifest.read_text())["research_seed"] == 7


def test_pixel_noise_cannot_be_regenerated(tmp_path, lfw, data_root, dlib_model):
    """Gaussian pixel noise: before, removable to 0.4 grey levels with the public seed 0."""
    from PIL import Image

    f = _image(lfw, 2)
    x = _clean_chip(f, dlib_model.crop)

    def best_residual(png) -> float:
        y = torch.from_numpy(np.array(Image.open(png))).permute(2, 0, 1).float()[None]
        res = []
        for s in PUBLIC_SEEDS:
            guess = (x + torch.randn(x.shape, generator=research_generator(s, 0)) * (8 / 255)).clamp(0, 1).mul(255).round()
            res.append(float((guess - y).abs().mean()))
        return min(res)

    fresh = protect_files("noise", {}, [f], tmp_path / "a", data_dir=data_root).written[0]
    seeded = protect_files("noise", {}, [f], tmp_path / "b", Randomness.research(3), data_dir=data_root).written[0]
    assert best_residual(seeded) < 0.01
    assert best_residual(fresh) > 4.0  # sigma 8 noise, unknown: ~6 grey levels of mean absolute difference


def test_batch_stops_on_bad_input_and_manifest_says_what_was_written(tmp_path, lfw, data_root):
    from PIL import Image

    from faceveil.defenses.cli_support import ProtectBatchError

    blank = tmp_path / "blank.png"
    Image.new("RGB", (96, 96), (128, 128, 128)).save(blank)
    good = [_image(lfw, 0), _image(lfw, 1)]
    with pytest.raises(ProtectBatchError, match="blank.png: no face found") as e:
        protect_files("blur", {"k": "8"}, [good[0], blank, good[1]], tmp_path / "o", data_dir=data_root)
    rep = e.value.report
    assert [r["status"] for r in rep.rows] == ["written", "failed", "not attempted"]
    assert json.loads(rep.manifest.read_text())["files"] == rep.rows
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == sorted([rep.written[0].name, "manifest.json"])
    with pytest.raises(ProtectBatchError) as e:
        protect_files("blur", {"k": "8"}, [good[0], blank, good[1]], tmp_path / "p", data_dir=data_root, keep_going=True)
    assert [r["status"] for r in e.value.report.rows] == ["written", "failed", "written"]
    with pytest.raises(Exception, match="no images given"):
        protect_files("blur", {}, [], tmp_path / "q")


def test_cli_protect_default_is_csprng_and_seed_needs_the_research_flag(tmp_path, lfw, data_root):
    from typer.testing import CliRunner

    from faceveil.cli import app

    f = str(_image(lfw, 0))
    run = CliRunner().invoke
    env = {"FACEVEIL_DATA": str(data_root)}
    outs = []
    for d in ("a", "b"):
        r = run(app, ["protect", "--defense", "noise", f, "-o", str(tmp_path / d)], env=env)
        assert r.exit_code == 0, r.output
        outs.append(np.asarray(__import__("PIL.Image").Image.open(next((tmp_path / d).glob("*.png")))))
    assert not np.array_equal(*outs)
    r = run(app, ["protect", "--defense", "noise", f, "--seed", "0", "-o", str(tmp_path / "c")], env=env)
    assert r.exit_code == 2 and "--research-seed" in r.output
    r = run(app, ["protect", "--defense", "noise", "-o", str(tmp_path / "d")], env=env)
    assert r.exit_code == 2 and "no images given" in r.output
    blank = tmp_path / "blank.png"
    __import__("PIL.Image").Image.new("RGB", (64, 64)).save(blank)
    r = run(app, ["protect", "--defense", "blur", str(blank), f, "-o", str(tmp_path / "e")], env=env)
    assert r.exit_code == 1 and "wrote 0 of 2" in r.output and "not attempted" in r.output


def test_secret_key_is_hidden_unpicklable_and_owner_only(tmp_path):
    k = SecretKey.generate()
    raw = k._key.hex()
    assert raw not in repr(k) and raw not in str(k) and k.fingerprint() in repr(k)
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(k)
    with pytest.raises(TypeError, match="cannot be pickled"):
        torch.save({"k": k}, tmp_path / "x.pt")
    p = k.save(tmp_path / "keys" / "client.key")
    assert stat.S_IMODE(p.stat().st_mode) == 0o600
    assert SecretKey.load(p) == k and SecretKey.load(p) != SecretKey.generate()
    # the same key and context give the same stream, other contexts and keys others
    g = lambda key, c: torch.rand(4, generator=key.generator(c))  # noqa: E731
    assert torch.equal(g(k, "perm"), g(SecretKey.load(p), "perm"))
    assert not torch.equal(g(k, "perm"), g(k, "signs")) and not torch.equal(g(k, "perm"), g(SecretKey.generate(), "perm"))
    os.chmod(p, 0o644)
    with pytest.raises(FaceveilKeyError, match="other users.*chmod 600"):
        SecretKey.load(p)
    bad = tmp_path / "bad.key"
    bad.write_text("not json")
    bad.chmod(0o600)
    with pytest.raises(FaceveilKeyError, match="not a valid faceveil key"):
        SecretKey.load(bad)
    with pytest.raises(FaceveilKeyError, match="no such key file"):
        SecretKey.load(tmp_path / "none.key")
    k2 = SecretKey.load_or_create(tmp_path / "new.key")
    assert SecretKey.load_or_create(tmp_path / "new.key") == k2


def test_research_key_is_deterministic_and_distinct():
    assert SecretKey.from_research_seed(1) == SecretKey.from_research_seed(1) != SecretKey.from_research_seed(2)
