"""Contracts every registered component keeps, parametrised over the registries (a new defense, attack,
recogniser or attribute model is covered by adding its file; no test is edited): shapes, dtypes,
determinism under a seed, a clear error on bad input, and a configuration that rebuilds it."""

from __future__ import annotations

import inspect
import json
import sys

import pytest
import torch
from typer.testing import CliRunner

from faceveil.attacks import ATTACKS, attack_names
from faceveil.attacks.base import NEEDS, Budget, PairSource, ReconstructionAttack
from faceveil.data.align import to_tensor
from faceveil.defenses import DEFENSES, defense_names, get_defense
from faceveil.errors import FaceveilDataError
from faceveil.models import attribute_model_names, get_attribute_model, get_recognizer, recognizer_names
from faceveil.system import ProtectedSystem


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def x(lfw_sample):
    return to_tensor(lfw_sample[1][:2])


def example_defense(name: str, recognizer, data_root):
    cls = DEFENSES.get(name)
    kw = dict(cls.EXAMPLE)
    if "data" in inspect.signature(cls.__init__).parameters:
        kw["data"] = data_root
    return get_defense(name, recognizer=recognizer, **kw)


def check_defense_contract(d, x: torch.Tensor) -> None:
    """The defense contract (also run on a defense added at test time, below)."""
    with torch.set_grad_enabled(d.needs_grad_to_protect):
        out = d.protect(x, gen(1))
        again = d.protect(x, gen(1))
        other = d.protect(x, gen(2))
        stored = d.protect_stored(out, gen(3))
    assert out.dtype == torch.float32 and len(out) == len(x) and torch.isfinite(out).all()
    assert torch.equal(out, again), "not deterministic under a seeded generator"
    assert d.stochastic != torch.equal(out, other), "stochastic <=> another seed gives another output"
    if d.domain == "image":
        lo, hi = d.output_range
        assert out.shape == x.shape and lo - 1e-6 <= float(out.min()) and float(out.max()) <= hi + 1e-6
    assert stored.dtype == torch.float32 and len(stored) == len(x) and d.storage_bytes() > 0
    if not d.needs_adapted_server:
        e = ProtectedSystem.frozen(d).embed_protected(stored.detach(), stored=True)
        # the recogniser's embedding, or what the server compares instead (a cancelable template)
        assert e.ndim == 2 and len(e) == len(x) and torch.isfinite(e).all()
        assert e.shape[1] == d.recognizer.embedding_dim or d.needs_key
    with pytest.raises(FaceveilDataError):
        d.protect(torch.full_like(x, float("nan")), gen(1))
    with pytest.raises(FaceveilDataError):
        d.protect(x[:, :2], gen(1))
    params = json.loads(json.dumps(d.public_params()))  # public parameters rebuild the same defense
    assert type(d)(recognizer=d.recognizer, **params, **({"data": d.data} if hasattr(d, "data") else {})).config() == d.config()
    assert not set(params) & set(d.NOT_CONFIG)


@pytest.mark.parametrize("name", defense_names())
def test_defense_contract(name, x, dlib_model, data_root):
    check_defense_contract(example_defense(name, dlib_model, data_root), x)


def test_a_new_defense_file_is_registered_listed_and_checked(tmp_path, x, dlib_model, monkeypatch):
    """One new file in a folder of the defenses package: it appears in the registry and in
    `faceveil defenses list`, and passes the contract, with no other edit."""
    import faceveil.defenses as pkg
    from faceveil.cli import app

    (tmp_path / "grayscale_plugin.py").write_text('''
import torch
from faceveil.defenses.base import Defense, register_defense

@register_defense("grayscale-test")
class Grayscale(Defense):
    """Replace colour by luminance (a test plugin)."""

    stochastic = False

    def __init__(self, *, mix: float = 1.0, recognizer=None) -> None:
        super().__init__(recognizer)
        self.mix = float(mix)

    def protect(self, x, rng=None):
        x = self._check_images(x)
        y = (0.299 * x[:, :1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:]).expand_as(x)
        return self.mix * y + (1 - self.mix) * x
''')
    monkeypatch.setattr(pkg, "__path__", [*pkg.__path__, str(tmp_path)])
    monkeypatch.setattr(DEFENSES, "_loaded", False)
    try:
        assert "grayscale-test" in defense_names()
        res = CliRunner().invoke(app, ["defenses", "list"])
        assert res.exit_code == 0 and "\ngrayscale-test " in res.output and "mix=1.0" in res.output
        check_defense_contract(get_defense("grayscale-test", recognizer=dlib_model, mix=0.5), x)
    finally:
        DEFENSES._items.pop("grayscale-test", None)
        sys.modules.pop("faceveil.defenses.grayscale_plugin", None)


def test_registry_import_errors_are_not_swallowed(tmp_path, monkeypatch):
    import faceveil.defenses as pkg

    (tmp_path / "broken_plugin.py").write_text("import faceveil_no_such_module\n")
    monkeypatch.setattr(pkg, "__path__", [*pkg.__path__, str(tmp_path)])
    monkeypatch.setattr(DEFENSES, "_loaded", False)
    try:
        with pytest.raises(ModuleNotFoundError, match="faceveil_no_such_module"):
            defense_names()
    finally:
        sys.modules.pop("faceveil.defenses.broken_plugin", None)


# --- attacks ---------------------------------------------------------------------------------------


def _forward(x: torch.Tensor) -> torch.Tensor:
    """A fixed differentiable map for optimisation attacks: 4x4 average pooling."""
    return torch.nn.functional.avg_pool2d(x, 4)


_DEFENSES: dict[str, object] = {}


def _defense_for(cls):
    """A defense-specific attack's first defense, at its example parameters with a small public pool of
    random 32-px images when it takes one (built once per defense)."""
    name = cls.defenses[0]
    if name not in _DEFENSES:
        dcls = DEFENSES.get(name)
        kw = dict(dcls.EXAMPLE)
        if "pool" in inspect.signature(dcls.__init__).parameters:
            kw["pool"] = torch.rand(8, 3, 32, 32, generator=gen(5))
        _DEFENSES[name] = get_defense(name, **kw)
    return _DEFENSES[name]


def _forward_maps(x: torch.Tensor) -> torch.Tensor:
    """A fixed differentiable map to the [B,8,16,16] maps the learned attacks are trained on here."""
    return torch.nn.functional.adaptive_avg_pool2d(torch.cat([x, x, x[:, :2]], 1), 16)


def make_attack(name: str, seed: int = 0):
    cls = ATTACKS.get(name)
    if "queries" in cls.needs:
        from faceveil.attacks.ganinv import QueryOracle

        oracle = QueryOracle(lambda x, t: (_forward(x) - t).flatten(1).norm(dim=1), (3, 8, 8), size=32)
        return cls(oracle=oracle, target_size=32, queries=8, population=4, seed=seed)
    if "forward_map" in cls.needs and "pairs" in cls.needs:  # learned, then refined per target
        return cls(forward=_forward_maps, target_size=32, steps=3, feature_steps=2, seed=seed)
    if "forward_map" in cls.needs:
        return cls(forward=_forward, target_size=32, steps=5, seed=seed)
    if "defense" in cls.needs:
        return cls(defense=_defense_for(cls), target_size=32, seed=seed)
    return cls(target_size=32, seed=seed)


@pytest.mark.parametrize("name", attack_names())
def test_attack_contract(name):
    cls = ATTACKS.get(name)
    assert cls.needs and set(cls.needs) <= set(NEEDS), f"{name} declares unknown needs {cls.needs}"
    assert cls.knowledge() in ("white-box", "black-box client")
    assert all(d in defense_names() for d in cls.defenses), f"{name} is written for unknown defenses {cls.defenses}"
    if "defense" in cls.needs:
        assert cls.defenses, f"{name} reads a defense's public constants: name the defenses it is written for"
    a = make_attack(name)
    cfg = a.config()
    assert cfg["name"] == name and json.loads(json.dumps(cfg)) == cfg
    assert set(cfg) - {"name"} == set(cls.params()) - set(cls.NOT_CONFIG)
    g = gen(0)
    targets = torch.rand(16, 3, 32, 32, generator=g)
    if isinstance(a, ReconstructionAttack):
        protected = torch.randn(16, 8, 16, 16, generator=g)
        budget = Budget(epochs=1, max_steps=2, batch_size=8, lr=1e-3, target_size=32)
        outs = []
        for _ in range(2):
            b = make_attack(name, seed=3)
            b.fit(PairSource(targets, protected=protected, seed=1), budget, progress=False)
            assert b.log.steps == 2 and b.log.planned_steps == 2
            outs.append(b.attack(protected[:4]))
        assert torch.equal(outs[0], outs[1]), "training is not deterministic under a seed"
        bad = torch.randn(4, 9, 16, 16)
    else:
        if "defense" in cls.needs:  # what the defense the attack is written for sends
            protected = a.defense.protect(targets[:4], gen(4))
            with pytest.raises(ValueError, match="written for"):  # any other defense is refused
                cls(defense=get_defense("none"), target_size=32)
        else:
            protected = _forward(targets[:4])
        outs = [make_attack(name).attack(protected) for _ in range(2)]
        assert torch.equal(outs[0], outs[1])
        bad = torch.randn(4, 3, 5, 5)
    out = outs[0]
    assert out.shape == (4, 3, 32, 32) and out.dtype == torch.float32 and 0 <= float(out.min()) <= float(out.max()) <= 1
    with pytest.raises(FaceveilDataError):
        b.attack(bad) if isinstance(a, ReconstructionAttack) else make_attack(name).attack(bad)


# --- recognisers and attribute models -----------------------------------------------------------


@pytest.mark.parametrize("name", recognizer_names())
def test_recognizer_contract(name, x):
    m = get_recognizer(name)
    e = m.embed(x)
    assert e.shape == (len(x), m.embedding_dim) and e.dtype == torch.float32 and torch.isfinite(e).all()
    assert torch.equal(e, m.embed(x))
    assert m.metric in ("euclidean", "cosine") and m.crop.size > 0
    with pytest.raises(FaceveilDataError):
        m.embed(x * 255)


@pytest.mark.parametrize("name", attribute_model_names())
def test_attribute_model_contract(name, x):
    m = get_attribute_model(name)
    out = m.predict(x)
    assert isinstance(out, dict) and out
    for k, v in out.items():
        assert isinstance(v, torch.Tensor) and len(v) == len(x) and torch.isfinite(v).all(), k
