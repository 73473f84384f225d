"""What a benchmark run is made of: profiles, the settings benchmarked per defense, the experiments'
registry and the context an experiment runs with. Experiment modules register into :data:`SETTINGS` and
:data:`EXPERIMENTS`; the runner reads them (it never imports an experiment module directly)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from faceveil.context import RunContext
from faceveil.data.datasets import LFW
from faceveil.defenses import DEFENSES, Defense, get_defense
from faceveil.registry import Registry


@dataclass
class Setting:
    """A defense configuration to benchmark."""

    label: str
    defense: str
    params: dict = field(default_factory=dict)
    attacks: tuple[str, ...] | None = None  # None: the run's attacks
    utility_servers: tuple[str, ...] | None = None  # None: decided from the defense
    views: tuple[str | None, ...] = (None,)  # None = non-adaptive; else adaptive attacker views
    profiles: tuple[str, ...] | None = None  # bench profiles that run this setting (None: all)

    def build(self, data=None) -> Defense:
        """The defense; ``data`` reaches defenses that draw from a public pool."""
        import inspect

        kw = dict(self.params)
        if "data" in inspect.signature(DEFENSES.get(self.defense).__init__).parameters:
            kw["data"] = data
        return get_defense(self.defense, **kw)


@dataclass(frozen=True)
class BenchProfile:
    name: str
    utility_per_fold: int | None  # LFW pairs per fold and class for utility (None = all 6,000)
    adapted: bool  # train adapted students
    attack_profile: str
    #: seconds of client protection allowed per data set (LFW utility images, student training images,
    #: attacker training images) for defenses whose protection is expensive (DeepBlur ~0.5-0.9 s/face,
    #: AdvNoise ~0.3 s/face on one core); None = no cap. Cheap defenses are never capped.
    protect_seconds: float | None = None
    #: LFW same-pairs judged for the white-box inversion: it optimises every target image through
    #: the client (150 steps x ~30 ms/step/face for a dlib embedding on one core = ~4.5 s/face)
    whitebox_pairs: int | None = None
    #: attacks run on every setting besides :data:`DEFAULT_ATTACKS` when no attack list is given (the suite's
    #: strongest attacks too slow for the cheap profiles: ``nbnet`` trains through the recogniser, the GAN-prior
    #: inversions take seconds per face)
    extra_attacks: tuple[str, ...] = ()
    #: the attack suite of the profile (None: :data:`DEFAULT_ATTACKS`)
    attacks: tuple[str, ...] | None = None
    #: with ``adapted``: train students only for the defenses the deployed recogniser cannot serve at all
    #: (``needs_adapted_server``), not for every image-domain defense
    adapted_only_needed: bool = False
    #: the budgets of the paper experiments run at this profile (None: the profile's own name)
    experiment_profile: str | None = None
    #: what the profile covers and what it leaves out (the report's header)
    covers: str = ""
    #: floors of a slow client's capped sets (:func:`setting_sizes`): LFW utility pairs per fold and class, training
    #: faces, judged same-pairs, faces of the template-protection measures
    min_per_fold: int = 5
    min_images: int = 128
    min_pairs: int = 50
    min_protection_images: int = 100


#: the command that gives the full numbers (every report's header names it)
FULL_COMMAND = ("`make full` (`faceveil bench --profile full --jobs 2`: about 1.5-2 days on two cores, resumable; "
                "`--executor ray` spreads its cells over a cluster)")

BENCH_PROFILES = {
    "fast": BenchProfile(
        "fast", utility_per_fold=10, adapted=True, adapted_only_needed=True, attack_profile="fast", protect_seconds=20,
        whitebox_pairs=10, min_per_fold=2, min_images=48, min_pairs=16, min_protection_images=24,
        attacks=("ridge", "dn", "whitebox", "instahide-unmix", "facemix-dominant"),
        experiment_profile="ci",
        covers=("the first report, minutes from a fresh clone (`make run`): every registered defense's benchmark "
                "settings; utility on 200 LFW pairs (frozen recogniser, and a short-trained student only where the "
                "recogniser cannot read the protected data at all); one attack of each kind: the closed-form `ridge` "
                "decoder, the learned `dn` decoder (80 steps of 32 on 1,000 public faces, 64 px), the `whitebox` inversion "
                "(10 pairs, 60 steps) where the defense is differentiable, and the defense-specific attacks; judged on "
                "50 LFW same-pairs; slow clients (DeepBlur, AdvNoise, AdvFace, PMT) protect a fixed number of faces "
                "per set. Not covered: `cgan`, `nbnet` and the GAN-prior inversions, adapted students for image "
                "defenses, the frequency-domain baselines DuetFace and PPFR-FD (megabytes per face), "
                "the paper experiments (`faceveil bench --defenses NAME`); every number is a lower bound "
                "on what an attacker can do.")),
    "ci": BenchProfile("ci", utility_per_fold=5, adapted=False, attack_profile="ci", protect_seconds=60, whitebox_pairs=20,
                       covers="the test suite's smoke profile: tiny time-bounded budgets, numbers not meant to be read."),
    "quick": BenchProfile("quick", utility_per_fold=50, adapted=True, attack_profile="quick", protect_seconds=240,
                          whitebox_pairs=50,
                          covers=("the former main job (about 2.5-3 hours on two cores): 1,000 LFW pairs, adapted students "
                                  "for image defenses, ridge / dn / cgan (600 steps) / whitebox (50 pairs) and the "
                                  "defense-specific attacks, judged on 300 pairs.")),
    "full": BenchProfile("full", utility_per_fold=None, adapted=True, attack_profile="full", whitebox_pairs=300,
                         extra_attacks=("nbnet", "ganinv", "ganinv-es")),
}


@dataclass(frozen=True)
class Sizes:
    """Data-set sizes of one setting under a profile (capped for expensive clients)."""

    utility_per_fold: int | None
    student_images: int | None  # None = the distillation profile's
    attack_images: int | None  # None = the attack profile's
    eval_pairs: int | None = None  # cap on the LFW same-pairs an attack is judged on (None = the attack profile's)


def setting_sizes(d: Defense, bp: BenchProfile) -> Sizes:
    """Cap the LFW utility pairs, the student/attacker training images and the attack evaluation pairs
    of a slow client so that protecting each set costs about ``bp.protect_seconds`` at its declared ``protect_ms_hint``
    (declared, not measured, so that sizes and cache keys do not depend on the machine's load)."""
    if bp.protect_seconds is None or d.protect_ms_hint <= 0:
        return Sizes(bp.utility_per_fold, None, None)
    n = int(1000 * bp.protect_seconds / d.protect_ms_hint)  # faces affordable per set
    per_fold = max(bp.min_per_fold, min(bp.utility_per_fold or 300, n // 40))  # 2 images x 2 classes x 10 folds
    cap = max(bp.min_images, n)
    return Sizes(per_fold, cap, cap, eval_pairs=max(bp.min_pairs, n))

#: benchmark settings per defense name; defense modules may register more (ablations)
SETTINGS: dict[str, list[Setting]] = {
    "none": [Setting("none (embedding)", "none", {"transmit": "embedding"}),
             Setting("none (res1 map)", "none", {"transmit": "res1"}),
             # the attacker who holds the unprotected image holds the face: no attack to train
             Setting("none (image)", "none", {"transmit": "image"}, attacks=())],
    # the FaceObfuscator and AdvFace papers' frequency-domain baselines send 162 / 105 maps of 112x112 (8.3 / 5.3 MB
    # per face) and their attackers re-protect every batch: not in the first report (fast); named runs at ci,
    # quick and full, and rows of FaceObfuscator's Table 3 and AdvFace's Table 2
    "duetface": [Setting("duetface", "duetface", {}, profiles=("ci", "quick", "full"))],
    "ppfr-fd": [Setting("ppfr-fd", "ppfr-fd", {}, profiles=("ci", "quick", "full"))],
}

#: per-defense experiments (paper tables/figures), run when that defense is named in --defenses:
#: fn(context) -> {"markdown": str, "figures": [paths], "data": {...}}
EXPERIMENTS: Registry[Callable] = Registry("experiment", "faceveil.bench.experiments")

#: ``ridge`` (closed form, seconds) is the floor every learned attack must beat on every setting (the report
#: flags those that do not); the defense-specific attacks (``Attack.defenses``: ``instahide-unmix``,
#: ``facemix-dominant``) run only on the defenses they are written for
DEFAULT_ATTACKS = ("ridge", "dn", "cgan", "whitebox", "instahide-unmix", "facemix-dominant")


def default_attacks(bp: BenchProfile) -> tuple[str, ...]:
    """The attack suite a bench run at profile ``bp`` runs when none are named: the strongest attack of each
    kind that fits the profile (closed form, learned decoders, white-box optimisation, defense-specific:
    :data:`DEFAULT_ATTACKS`), then the profile's :attr:`BenchProfile.extra_attacks` (at full: ``nbnet``, whose
    training through the recogniser on twice the faces would lengthen ``make run`` (quick) by hours, and the
    GAN-prior inversions, white-box and query-only, whose seconds per face do not fit the cheap profiles).
    A defense's verdict is its worst case over the suite (:mod:`faceveil.bench.verdicts`)."""
    base = bp.attacks if bp.attacks is not None else DEFAULT_ATTACKS
    return base + tuple(a for a in bp.extra_attacks if a not in base)


def profile_coverage(name: str) -> str:
    """What the bench profile ``name`` covers, and the command that gives the full numbers (report header)."""
    bp = BENCH_PROFILES.get(name)
    if bp is None:
        return ""
    if bp.name == "full":
        return "the full benchmark: every budget at its largest (see README)."
    return f"The {bp.name} profile: {bp.covers} Full numbers: {FULL_COMMAND}."


def attack_suite(profile: str) -> tuple[str, ...]:
    """:func:`default_attacks` of the bench profile named ``profile``."""
    return default_attacks(BENCH_PROFILES[profile])


def settings_for(name: str, profile: str | None = None) -> list[Setting]:
    """The benchmark settings of defense ``name`` at bench profile ``profile`` (None: those of every profile)."""
    EXPERIMENTS.load()  # experiment modules register per-defense settings too

    if name in SETTINGS:
        return [st for st in SETTINGS[name] if st.profiles is None or profile in st.profiles]
    return [Setting(name, name, {})]


@dataclass(frozen=True)
class ExperimentContext(RunContext):
    """What a paper experiment's ``run`` takes: the run context (``profile`` is the bench profile's name,
    ``out_dir`` the experiment's folder), the bench profile, the LFW dataset, and experiment-specific
    ``options`` (e.g. FaceObfuscator's ``parts``)."""

    bench_profile: BenchProfile | None = None
    lfw: LFW | None = None
    options: dict = field(default_factory=dict)

    def attack_ctx(self, out_dir: Path | None = None) -> RunContext:
        """The context of this experiment's attack and student runs: the bench profile's attack profile."""
        return RunContext(self.bench_profile.attack_profile, self.seed, self.data, self.device, self.force,
                          self.progress, out_dir)

    def student_overrides(self) -> dict:
        """Distillation overrides of this run's adapted servers: ``--student-seconds`` raises (or lowers) the
        profile's wall-time cap, so a slow client's student trains its planned steps on a slow machine (a cap
        is part of the student's cache key: such students are trained apart)."""
        s = self.options.get("student_seconds")
        return {"max_seconds": float(s)} if s else {}

    def cells(self) -> Path:
        """Where the experiment's attack cells write their grids and JSON."""
        return Path(self.out_dir) / "cells"
