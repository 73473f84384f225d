"""``keyed-projection``: faceveil's own protection — a keyed random projection of the face embedding,
sign-quantised: a cancelable template (BioHashing, Teoh, Ngo & Goh, Pattern Recognition 2004, with the
Gaussian sign random projections of Charikar, STOC 2002), each user under a key of their own::

    client:  x --recogniser--> f ∈ R^d --W_K f (W_K: m×d, i.i.d. N(0,1), from the user's key K)--> h = sign(W_K f) ∈ {±1}^m
    server:  stores h; compares two templates by cosine distance (= 2·Hamming/m for ±1 vectors)

``bits = 0`` keeps the real values instead: ``h = Q_K f/‖f‖`` with ``Q_K`` a Haar-random orthogonal matrix
(no loss of accuracy at all; exactly invertible once the key is known).

**Utility.** For a Gaussian ``W``, ``P[sign(w·f) ≠ sign(w·f')] = θ(f, f')/π`` (Goemans & Williamson 1995;
Charikar 2002), so the Hamming distance of two templates made with the same key is an unbiased estimate of
the angle between the embeddings, with standard deviation ``sqrt(p(1−p)/m)``. LFW (6,000 pairs, dlib,
cosine 98.9 %): m = 512 → 97.2 %, 1,024 → 98.1 %, 2,048 → 98.5 % (3 keys each; measured in the tests and
the bench). The raw (uncentred) dlib embedding is projected: centring it on a public mean costs accuracy.

**Privacy when the key is secret (threat model (a): channel or database leak).** For any orthogonal ``Q``,
``W Q`` has the distribution of ``W`` (i.i.d. Gaussian rows are rotation invariant). So under a key the
attacker does not hold, the joint distribution of the templates ``sign(W f_1), …, sign(W f_k)`` of one user
depends on ``f_1 … f_k`` only through the angles between them: one template is uniform on {±1}^m whoever
the person is, and a user's k templates reveal only how alike the user's own k images are. Templates of
different users (different keys) are independent. No attacker — learned, white-box (BPDA/EOT over keys,
Athalye et al. 2018), query-based — can get more than the random-person level out of templates alone; the
benchmark measures that they do not (it checks the code, not the theorem). Computationally the key is 256
bits from the OS CSPRNG; ``W`` is drawn from a torch generator seeded with 64 bits of HMAC-SHA256(key)
(:meth:`faceveil.keys.SecretKey.generator`), so the work factor of guessing ``W`` is 2^64.

**What does not hold.** (b) *key known*: ``sign(W f)`` with known ``W`` and ``m ≥ d`` is a one-bit
compressed-sensing measurement of ``f``'s direction; a decoder trained on pairs made under that key inverts it
(cancelable templates are reversible once the key leaks: Paik et al., BMVC 2023). A deployment-wide key
(``key_scope="deployment"``: every client holds the same key, which 1:N identification needs) is in (b) as soon
as an attacker has one client. Replay: a stolen template is accepted if sent as is (no liveness or
challenge-response here). With per-user keys there is no 1:N identification (a probe can only be compared
under the claimed user's key).

In the attack benchmark (:meth:`population_leak`), ``key_scope="user"`` gives every face its own key drawn from the
benchmark's seeded generator (a population of users, each with a key the attacker does not hold; his black-box
client protects his public faces under fresh keys, Kerckhoffs), while :meth:`protect` — the user's device —
always uses the instance's key; LFW utility is measured with all faces under one key (genuine pairs as with
per-user keys; impostor pairs as an impostor who holds the victim's key, the conservative case).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from faceveil.defenses.base import check_features, register_defense
from faceveil.defenses.laplace import FeatureDefense
from faceveil.keys import SecretKey, os_generator
from faceveil.models.base import Recognizer

KEY_SCOPES = ("user", "deployment")
#: the key-derivation context of the projection (changing it changes every template)
CONTEXT = "keyed-projection:W"


def projection(bits: int, dim: int, gen: torch.Generator, batch: int | None = None) -> Tensor:
    """The keyed map's matrix: ``[m, d]`` i.i.d. N(0,1) (``bits = m > 0``) or a Haar-random orthogonal ``[d, d]``
    (``bits = 0``: QR of a Gaussian matrix with the signs of R's diagonal, Mezzadri 2007); ``batch``: one
    independent matrix per face, ``[B, ...]``."""
    shape = (bits or dim, dim) if batch is None else (batch, bits or dim, dim)
    g = torch.randn(shape, generator=gen, dtype=torch.float64)
    if bits:
        return g.float()
    q, r = torch.linalg.qr(g)
    return (q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)).float()


def sign_ste(z: Tensor) -> Tensor:
    """``sign(z)`` (0 → +1) forward, identity backward: the straight-through (BPDA) surrogate of the quantiser."""
    s = torch.where(z >= 0, 1.0, -1.0).to(z.dtype)
    return z + (s - z).detach()


@register_defense("keyed-projection")
class KeyedProjection(FeatureDefense):
    """Keyed Gaussian projection of the embedding to ``bits`` signs (module docstring). ``key``: the user's
    :class:`~faceveil.keys.SecretKey` (fresh from the OS CSPRNG when not given); ``research_key_seed``: derive the
    key from a public seed instead (benchmarks only: such a key is not secret)."""

    #: protect() is a function of the key (the benchmark's population_leak draws one key per face instead)
    stochastic = False
    differentiable = False  # sign; white-box attacks use the straight-through surrogate (whitebox_forward)
    needs_key = True
    HELP: ClassVar[dict[str, str]] = {
        "bits": "template length m (sign bits, >= 16); 0 = a keyed orthogonal rotation of the normalised embedding",
        "key_scope": "user (each user's own key; the benchmark gives every face a key the attacker lacks) | "
                     "deployment (one key for every client: identification works, any client is the key)",
        "research_key_seed": "derive the key from this public seed (research runs; NOT secret); default: the given "
                             "key or a fresh CSPRNG key",
    }
    EXAMPLE: ClassVar[dict] = {"bits": 256}

    def __init__(self, *, bits: int = 1024, key_scope: str = "user", research_key_seed: int | None = None,
                 key: SecretKey | None = None, recognizer: Recognizer | None = None) -> None:
        if isinstance(bits, bool) or not isinstance(bits, int) or not (bits == 0 or 16 <= bits <= 65536):
            raise ValueError(f"keyed-projection: bits must be 0 (rotation) or an integer in [16, 65536], got {bits!r}")
        if key_scope not in KEY_SCOPES:
            raise ValueError(f"keyed-projection: key_scope must be one of {KEY_SCOPES}, got {key_scope!r}")
        if research_key_seed is not None:
            if isinstance(research_key_seed, bool) or not isinstance(research_key_seed, int):
                raise ValueError(f"keyed-projection: research_key_seed must be an integer, got {research_key_seed!r}")
            if key is not None:
                raise ValueError("keyed-projection: give a key or a research_key_seed, not both")
            key = SecretKey.from_research_seed(research_key_seed)
        if key is not None and not isinstance(key, SecretKey):
            raise TypeError(f"keyed-projection: key must be a faceveil SecretKey, got {type(key).__name__}")
        self.bits, self.key_scope, self.research_key_seed = bits, key_scope, research_key_seed
        self.key = key if key is not None else SecretKey.generate()
        super().__init__("embedding", recognizer)
        self._w: Tensor | None = None
        self._eot = torch.Generator().manual_seed(0)

    # --- the keyed map ------------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return self.recognizer.embedding_dim

    @property
    def out_dim(self) -> int:
        return self.bits or self.dim

    def matrix(self) -> Tensor:
        """This key's projection (derived once from the key)."""
        if self._w is None:
            self._w = projection(self.bits, self.dim, self.key.generator(CONTEXT))
        return self._w

    def encode(self, f: Tensor, w: Tensor, ste: bool = False) -> Tensor:
        """Templates of embeddings ``f`` ``[B,d]`` under ``w`` (``[m,d]``, or one per face ``[B,m,d]``)."""
        f = check_features(f, (self.dim,), "keyed-projection embedding")
        if self.bits == 0:
            f = f / f.norm(dim=1, keepdim=True).clamp_min(1e-12)
        z = f @ w.T if w.ndim == 2 else torch.bmm(w, f.unsqueeze(-1)).squeeze(-1)
        if self.bits == 0:
            return z
        return sign_ste(z) if ste else torch.where(z >= 0, 1.0, -1.0).to(z.dtype)

    def protect(self, x: Tensor, rng: torch.Generator | None = None) -> Tensor:
        """The user's device: the template of chips ``x`` under this instance's key (``rng`` unused: the
        protection is a function of the key)."""
        with torch.no_grad():
            return self.encode(self.clean_features(x), self.matrix())

    def population_leak(self, x: Tensor, scenario: str = "channel", rng: torch.Generator | None = None) -> Tensor:
        """What an attacker gets of faces ``x`` of many users: each face under a key of its own
        (``key_scope="user"``, drawn from ``rng``), or all under the deployment's key."""
        if scenario not in ("channel", "database"):
            raise ValueError(f"leakage scenario must be 'channel' or 'database', got {scenario!r}")
        if self.key_scope == "deployment":
            return self.leak(x, scenario, rng)
        rng = rng if rng is not None else os_generator()
        with torch.no_grad():
            f = self.clean_features(x)
            return self.encode(f, projection(self.bits, self.dim, rng, batch=len(f)))

    def whitebox_forward(self, x: Tensor, leakage: str = "channel") -> Tensor:
        """The white-box attacker's differentiable map: the recogniser, then the projection with the
        straight-through sign (BPDA). With ``key_scope="user"`` he does not hold the target's key, so every
        call draws a fresh one (EOT over keys, Athalye et al. 2018); with a deployment key he holds it."""
        f = self.clean_features(x)
        if self.key_scope == "deployment":
            return self.encode(f, self.matrix(), ste=True)
        return self.encode(f, projection(self.bits, self.dim, self._eot, batch=len(f)), ste=True)

    def stored_shape(self) -> tuple[int, ...]:
        return (self.out_dim,)

    def storage_bytes(self) -> int:
        """Bits packed (a database stores m/8 bytes; the service keeps float32 ±1 vectors)."""
        return self.bits // 8 if self.bits else 4 * self.dim

    def with_key(self, key: SecretKey) -> KeyedProjection:
        """The same protection under another key (a user's own, or a renewed one)."""
        return type(self)(bits=self.bits, key_scope=self.key_scope, key=key, recognizer=self.recognizer)

