"""The reconstruction networks (dn, urec, resrec, transrec, cgan) and the white-box inversion."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from faceveil.attacks import Budget, PairSource, ReconstructionAttack, attack_names, get_attack
from faceveil.attacks.cgan import CGAN
from faceveil.attacks.whitebox import WhiteBox
from faceveil.data.align import to_tensor
from faceveil.errors import FaceveilDataError
from faceveil.models.base import CropSpec

TRAINABLE = ["dn", "urec", "resrec", "transrec", "cgan"]
#: protected-data kinds: 128-D embedding, dlib 'res1' map, FaceObfuscator frequency map, image
INPUTS = {"vector": (128,), "map": (32, 35, 35), "frequency": (2, 112, 112), "image": (3, 150, 150)}


def _small(name: str) -> dict:
    """Narrow networks for the slower checks (the architecture is the same)."""
    return {"transrec": {"width": 0.5}}.get(name, {"width": 8})


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small CPU workloads: one thread (two threads on a busy 2-core machine are ~10x slower)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def dlib_client(dlib_model):
    return dlib_model.split("res1")[0]


@pytest.fixture(scope="module")
def celeba_faces(data_root):
    """256 real CelebA faces: 150x150 dlib chips in [0,1]."""
    from faceveil.data.datasets import celeba

    chips, _ = celeba(data_root, "aligned").subset(range(256)).chips(CropSpec(150, 0.25), progress=False)
    return to_tensor(chips)


def _random_source(shape: tuple[int, ...], n: int = 8, size: int = 64) -> PairSource:
    g = torch.Generator().manual_seed(0)
    return PairSource(torch.rand(n, 3, size, size, generator=g), torch.randn(n, *shape, generator=g))


def test_all_attacks_registered():
    names = attack_names()
    for n in [*TRAINABLE, "whitebox"]:
        assert n in names
    assert all(isinstance(get_attack(n, target_size=64), ReconstructionAttack) for n in TRAINABLE)
    assert not get_attack("whitebox").trainable


@pytest.mark.parametrize("name", TRAINABLE)
@pytest.mark.parametrize("size", [64, 112])
def test_output_shape_and_range(name, size):
    torch.manual_seed(0)
    for kind, shape in INPUTS.items():
        attack = get_attack(name, target_size=size)
        net = attack.build(shape).eval()
        with torch.no_grad():
            out = net(torch.randn(2, *shape) * 3)
        assert out.shape == (2, 3, size, size), (name, kind)
        assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1, (name, kind)
        assert out.std() > 0, (name, kind)


@pytest.mark.parametrize("size", [64, 112])
def test_transrec_on_dlib_client_shapes(dlib_client, size):
    x = torch.rand(2, 3, 150, 150)
    with torch.no_grad():
        z = dlib_client(x)
    attack = get_attack("transrec", target_size=size, client=dlib_client)
    net = attack.build(tuple(z.shape[1:])).eval()
    with torch.no_grad():
        out = net(z)
    assert out.shape == (2, 3, size, size) and out.min() >= 0 and out.max() <= 1


def test_transrec_mirrors_dlib_client(dlib_model):
    for at in ("res1", "res4"):
        client = dlib_model.split(at)[0]
        with torch.no_grad():
            shape = tuple(client(torch.rand(1, 3, 150, 150)).shape[1:])
        net = get_attack("transrec", target_size=64, client=client).build(shape)
        convs = [m for m in client.modules() if isinstance(m, nn.Conv2d)]
        deconvs = [m for m in net.modules() if isinstance(m, nn.ConvTranspose2d)]
        assert len(deconvs) == len(convs), at
        for c, d in zip(reversed(convs), deconvs, strict=True):
            assert (d.in_channels, d.out_channels) == (c.out_channels, c.in_channels), at
            assert (d.kernel_size, d.stride, d.padding) == (c.kernel_size, c.stride, c.padding), at
        # the mirror of the 7x7/2 stem conv restores dlib's 150x150 input exactly (output padding 1)
        assert deconvs[-1].output_padding == (1, 1)
        # pool1 (max pool 3/2) is mirrored by up-sampling to its 72x72 input
        assert any(getattr(m, "size", None) == (72, 72) for m in net.modules())


class _HostScale(nn.Module):
    """A layer the meta device cannot run (reads a value back to Python)."""

    def forward(self, x):
        return x * float(x.abs().max().item() >= 0)


def test_transrec_mirrors_any_client():
    client = nn.Sequential(nn.Conv2d(3, 8, 5, 2, 2), _HostScale(), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, 2, 0))
    with torch.no_grad():
        z = client(torch.rand(2, 3, 97, 97))
    net = get_attack("transrec", target_size=64, client=client, width=2.0).build(tuple(z.shape[1:]))
    deconvs = [m for m in net.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert [(d.kernel_size, d.stride, d.padding) for d in deconvs] == [((3, 3), (2, 2), (0, 0)), ((5, 5), (2, 2), (2, 2))]
    assert [(d.in_channels, d.out_channels) for d in deconvs] == [(32, 16), (16, 3)]  # width 2: hidden channels doubled
    with torch.no_grad():
        out = net.eval()(z)
    assert out.shape == (2, 3, 64, 64)


def test_transrec_rejects_mismatched_client(dlib_client):
    with pytest.raises(FaceveilDataError):
        get_attack("transrec", target_size=64, client=dlib_client).build((64, 17, 17))


def test_bad_per_sample_shape_rejected():
    for name in TRAINABLE:
        with pytest.raises(FaceveilDataError):
            get_attack(name, target_size=64).build((3, 4))


def test_dn_learns_real_faces_from_dlib_embeddings(celeba_faces, dlib_model):
    """dn on 256 CelebA faces (64x64) from their dlib embeddings: the loss must fall clearly and the
    reconstructions must beat the best constant image (the per-pixel median face)."""
    targets = F.interpolate(celeba_faces, size=(64, 64), mode="bilinear", align_corners=False, antialias=True)
    emb = dlib_model.embed(celeba_faces)
    attack = get_attack("dn", target_size=64, width=8, seed=0)
    bs = 32
    attack.fit(PairSource(targets, emb), Budget(epochs=1000, max_steps=160, batch_size=bs, lr=3e-3, target_size=64),
               progress=False)
    per_epoch = len(targets) // bs
    losses = attack.log.losses
    assert len(losses) == 160
    first, last = sum(losses[:per_epoch]) / per_epoch, sum(losses[-per_epoch:]) / per_epoch
    assert last < 0.8 * first, (first, last)
    recon = attack.attack(emb)
    median_l1 = (targets.median(0).values - targets).abs().mean()
    assert (recon - targets).abs().mean() < median_l1


def test_cgan_step_updates_generator_and_discriminator():
    torch.manual_seed(0)
    attack = CGAN(target_size=64, width=8, d_width=8)
    attack.net = attack.build((128,))
    attack.in_shape = (128,)
    attack.net.train()
    opt = attack.make_optimizer(Budget(target_size=64))
    g0 = [p.detach().clone() for p in attack.pix2pix.generator.parameters()]
    d0 = [p.detach().clone() for p in attack.pix2pix.discriminator.parameters()]
    loss = attack.train_step(torch.randn(4, 128), torch.rand(4, 3, 64, 64), opt)
    assert loss > 0 and len(attack.gan_log["d"]) == len(attack.gan_log["g_adv"]) == 1
    g_changed = [not torch.equal(a, b) for a, b in zip(g0, attack.pix2pix.generator.parameters(), strict=True)]
    d_changed = [not torch.equal(a, b) for a, b in zip(d0, attack.pix2pix.discriminator.parameters(), strict=True)]
    assert all(g_changed) and all(d_changed)
    assert opt.param_groups[0]["lr"] == 2e-4 and opt.param_groups[0]["betas"] == (0.5, 0.999)


def test_whitebox_lowers_objective_on_real_chip(celeba_faces, dlib_client):
    x = celeba_faces[:2]
    with torch.no_grad():
        z = dlib_client(x)
    attack = WhiteBox(forward=dlib_client, input_size=150, target_size=64, steps=25)
    out = attack.attack(z)
    assert out.shape == (2, 3, 64, 64) and out.min() >= 0 and out.max() <= 1
    tr = attack.trace
    assert tr.shape == (26, 2)
    assert (tr[-1] < 0.6 * tr[0]).all(), tr[[0, -1]]
    # the reconstruction moved from mid-grey towards the face
    target = F.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False, antialias=True)
    assert (out - target).abs().mean() < (0.5 - target).abs().mean()
    sign = WhiteBox(forward=dlib_client, input_size=150, target_size=64, steps=10, lr=0.01, method="sign")
    sign.attack(z[:1])
    assert sign.trace[-1, 0] < sign.trace[0, 0]


def test_whitebox_rejects_bad_input(dlib_client):
    attack = WhiteBox(forward=dlib_client, input_size=150, target_size=64, steps=1)
    good = torch.zeros(1, 32, 35, 35)
    with pytest.raises(FaceveilDataError):
        attack.attack(torch.zeros(1, 128))
    with pytest.raises(FaceveilDataError):
        attack.attack(good.long())
    with pytest.raises(FaceveilDataError):
        attack.attack(good.clone().fill_(float("nan")))


@pytest.mark.parametrize("name", TRAINABLE)
def test_fit_save_load_round_trip_and_input_checks(name, tmp_path):
    shape = INPUTS["map"]
    attack = get_attack(name, target_size=64, seed=1, **_small(name))
    attack.fit(_random_source(shape), Budget(epochs=1, max_steps=2, batch_size=4, target_size=64), progress=False)
    assert attack.log.steps == 2
    probe = torch.randn(3, *shape)
    out = attack.attack(probe)
    assert out.shape == (3, 3, 64, 64)
    path = tmp_path / f"{name}.pt"
    attack.save(path)
    loaded = get_attack(name, target_size=64, seed=1, **_small(name)).load(path)
    assert torch.equal(loaded.attack(probe), out)
    assert loaded.log.steps == 2
    with pytest.raises(FaceveilDataError):
        attack.attack(torch.randn(3, 32, 34, 35))  # wrong shape
    with pytest.raises(FaceveilDataError):
        attack.attack(torch.zeros(3, *shape, dtype=torch.int64))  # wrong dtype
    bad = probe.clone()
    bad[1, 0, 0, 0] = float("nan")
    with pytest.raises(FaceveilDataError):
        attack.attack(bad)


def test_one_cycle_schedule_shape():
    from faceveil.attacks.base import one_cycle

    assert one_cycle(0.0) == pytest.approx(1 / 25) and one_cycle(0.15) == pytest.approx(1.0)
    assert one_cycle(1.0) == pytest.approx(1 / 25e4) and one_cycle(2.0) == one_cycle(1.0)
    f = [one_cycle(i / 100) for i in range(101)]
    assert all(a <= b for a, b in zip(f[:15], f[1:16], strict=True))  # warm-up rises
    assert all(a >= b for a, b in zip(f[15:-1], f[16:], strict=True))  # then anneals


def test_step_budget_is_reproducible_and_anneals():
    """A step budget ends training at its steps whatever the wall time (the seconds are only a guard)
    and gives the same network twice; a time budget stops by time, an epoch budget by epochs."""
    torch.manual_seed(0)
    src = PairSource(torch.rand(64, 3, 16, 16), protected=torch.randn(64, 128), seed=0)
    b = Budget(epochs=100, max_steps=12, max_seconds=600, batch_size=16, target_size=16)
    a1 = get_attack("dn", target_size=16, width=8).fit(src, b, progress=False)
    a2 = get_attack("dn", target_size=16, width=8).fit(src, b, progress=False)
    assert a1.log.steps == 12 and a1.log.stopped_by == "steps" and a1.log.epochs == 3
    assert a1.log.losses == a2.log.losses
    assert all(torch.equal(p, q) for p, q in zip(a1.net.state_dict().values(), a2.net.state_dict().values(), strict=True))
    timed = get_attack("dn", target_size=16, width=8).fit(src, Budget(epochs=10_000, max_seconds=0.5, batch_size=16,
                                                                         target_size=16), progress=False)
    assert timed.log.stopped_by == "time" and timed.log.seconds >= 0.5
    short = get_attack("dn", target_size=16, width=8).fit(src, Budget(epochs=2, batch_size=16, target_size=16), progress=False)
    assert short.log.stopped_by == "epochs" and short.log.steps == 8


class _Recorder(PairSource):
    """A stochastic (redraw) source of real faces that records the epochs it serves and can stop the
    process when an epoch starts (a killed training job)."""

    def __init__(self, faces: Tensor, stop_at: int | None = None) -> None:
        targets = F.interpolate(faces, size=(32, 32), mode="bilinear", align_corners=False, antialias=True)
        small = F.interpolate(faces, size=(16, 16), mode="area")

        def redraw(c: Tensor, g: torch.Generator) -> Tensor:
            return c + 0.1 * torch.randn(c.shape, generator=g)

        super().__init__(targets, inputs=small, redraw=redraw, seed=3)
        self.stop_at, self.epochs = stop_at, []

    def batches(self, epoch: int, batch_size: int):
        if epoch == self.stop_at:
            raise KeyboardInterrupt("killed")
        self.epochs.append(epoch)
        yield from super().batches(epoch, batch_size)


def test_training_resumes_from_its_checkpoint_exactly(celeba_faces, tmp_path):
    """pix2pix (two optimisers, dropout) on 64 real faces with fresh noise every epoch: a run killed
    after two epochs and resumed from its checkpoint ends with the network, losses and GAN log of the
    uninterrupted run, and does not train the first two epochs again."""
    faces = celeba_faces[:64]
    budget = Budget(epochs=4, batch_size=16, lr=2e-4, target_size=32)
    ref = CGAN(target_size=32, width=8, d_width=8, seed=1).fit(_Recorder(faces), budget, progress=False)
    ckpt = tmp_path / "cgan.ckpt"
    killed = CGAN(target_size=32, width=8, d_width=8, seed=1)
    with pytest.raises(KeyboardInterrupt):
        killed.fit(_Recorder(faces, stop_at=2), budget, progress=False, checkpoint=ckpt, checkpoint_seconds=0)
    assert ckpt.is_file()
    src = _Recorder(faces)
    resumed = CGAN(target_size=32, width=8, d_width=8, seed=1)
    resumed.fit_and_save(src, budget, tmp_path / "cgan.pt", progress=False)
    assert src.epochs == [2, 3] and not ckpt.exists() and (tmp_path / "cgan.pt").is_file()
    assert resumed.log.steps == ref.log.steps == 16 and resumed.log.epochs == 4
    assert resumed.log.losses == ref.log.losses and resumed.gan_log == ref.gan_log
    assert all(torch.equal(p, q) for p, q in zip(ref.net.state_dict().values(), resumed.net.state_dict().values(),
                                                  strict=True))
    with pytest.raises(KeyboardInterrupt):
        killed.fit(_Recorder(faces, stop_at=1), budget, progress=False, checkpoint=ckpt, checkpoint_seconds=0)
    with pytest.raises(ValueError, match="another configuration"):
        CGAN(target_size=32, width=8, d_width=8, seed=2).fit(_Recorder(faces), budget, progress=False, checkpoint=ckpt)


def test_input_statistics_survive_faceobfuscator_scales(celeba_faces):
    """FaceObfuscator's uploads carry per-image, per-channel scales 2^v with |v| <= 60: the attackers'
    input standardisation must keep finite statistics and outputs (in float32 the running variance
    overflowed to inf and every attacker trained on zeros), and a cached attacker whose statistics
    are not finite is recognised as unhealthy (the harness retrains it)."""
    from faceveil.defenses import get_defense

    d = get_defense("faceobfuscator")
    faces = celeba_faces[:32]
    up = d.protect(faces, torch.Generator().manual_seed(1))
    assert up.abs().max() > 2.0**40  # the scales that overflow float32 squares
    for name in ("dn", "cgan"):
        attack = get_attack(name, target_size=32, width=8)
        src = PairSource(F.interpolate(faces, size=(32, 32), mode="area"), protected=up, seed=0)
        budget = Budget(epochs=2, batch_size=16, target_size=32)
        attack.fit(src, budget, progress=False)
        assert attack.healthy(), name
        assert torch.isfinite(attack.attack(up)).all()
        norm = next(m for m in attack.net.modules() if m.__class__.__name__ == "InputNorm")
        norm.bn.running_var.fill_(float("inf"))
        assert not attack.healthy()
        attack.fit(src, budget, progress=False)  # what the harness does with an unhealthy cached attacker
        fresh = get_attack(name, target_size=32, width=8).fit(src, budget, progress=False)
        assert attack.healthy() and attack.log.steps == 4, (name, attack.log)
        assert all(torch.equal(a, b) for a, b in zip(attack.net.state_dict().values(), fresh.net.state_dict().values(),
                                                      strict=True)), name
