"""Server models adapted to protected inputs (students), with a declared spec each so that a saved system
rebuilds them from plain data (:func:`build_student`), never by unpickling.

Trained by :mod:`faceveil.train.distill`; kept here, below the system layer, because a loaded system
needs the architectures but not the training code."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class IRBlock(nn.Module):
    """Improved-residual basic block (ArcFace IR): BN-conv3x3-BN-PReLU-conv3x3(stride)-BN + shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(cin),
            nn.Conv2d(cin, cout, 3, 1, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.PReLU(cout),
            nn.Conv2d(cout, cout, 3, stride, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.short = (
            nn.Identity() if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x) + self.short(x)


class StudentNet(nn.Module):
    """IR-18-like embedding network: stride-2 stem, 4 stages of 2 IR blocks (width w, 2w, 4w, 8w; each
    stage halves the resolution), BN-dropout-GAP-FC head to a ``emb_dim`` embedding.

    Accepts image-like inputs (``in_ch=3``) or frequency maps (FaceObfuscator: 2 channels at
    112x112, or 64 channels); inputs of another size are resized bilinearly to ``input_size``.
    """

    def __init__(self, in_ch: int = 3, width: int = 32, emb_dim: int = 128, input_size: int = 112,
                 blocks: tuple[int, ...] = (2, 2, 2, 2)) -> None:
        super().__init__()
        self.in_ch, self.input_size = in_ch, input_size
        self._spec = {"arch": "ir18", "in_ch": in_ch, "width": width, "emb_dim": emb_dim, "input_size": input_size,
                      "blocks": list(blocks)}
        # stride-2 stem (ArcFace's IR-ResNet uses stride 1 at 112 px; 4x cheaper here, for CPUs)
        self.stem = nn.Sequential(nn.Conv2d(in_ch, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width), nn.PReLU(width))
        layers: list[nn.Module] = []
        cin = width
        for i, n in enumerate(blocks):
            cout = width * 2**i
            for j in range(n):
                layers.append(IRBlock(cin, cout, 2 if j == 0 else 1))
                cin = cout
        self.body = nn.Sequential(*layers)
        # no final BatchNorm1d: the student regresses the teacher's embeddings, whose scale is fixed
        self.head = nn.Sequential(nn.BatchNorm2d(cin), nn.Dropout(0.1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(cin, emb_dim))

    def spec(self) -> dict:
        return dict(self._spec)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[1] != self.in_ch:
            raise ValueError(f"student expects {self.in_ch} input channels, got {x.shape[1]}")
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False,
                              antialias=x.shape[-1] > self.input_size)
        return self.head(self.body(self.stem(x)))


class InputAdapter(nn.Module):
    """Maps non-RGB protected inputs (e.g. frequency maps) to a 3-channel image-like tensor at the
    pretrained network's input size: [x, |x|] (so sign-randomised inputs are easy to use),
    conv3x3-BN-ReLU-conv3x3-sigmoid, bilinear resize."""

    def __init__(self, in_ch: int, size: int, hidden: int = 32) -> None:
        super().__init__()
        self.size = size
        self.net = nn.Sequential(nn.BatchNorm2d(2 * in_ch), nn.Conv2d(2 * in_ch, hidden, 3, 1, 1), nn.BatchNorm2d(hidden),
                                 nn.ReLU(inplace=True), nn.Conv2d(hidden, 3, 3, 1, 1), nn.Sigmoid())

    def forward(self, x: Tensor) -> Tensor:
        y = self.net(torch.cat([x, x.abs()], dim=1))
        if y.shape[-1] != self.size:
            y = F.interpolate(y, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return y


class FinetuneStudent(nn.Module):
    """The deployed dlib ResNet, initialised from the teacher's weights and fine-tuned on protected
    inputs (a CPU-feasible server adaptation); non-RGB inputs get a trainable :class:`InputAdapter`."""

    def __init__(self, in_ch: int = 3, in_size: int = 150, base: str | None = None) -> None:
        super().__init__()
        from faceveil.config import deployed_recognizer_name
        from faceveil.models import get_recognizer

        self.base_name = base or deployed_recognizer_name()
        base = _splittable(get_recognizer(self.base_name))
        self.size = base.input_size
        self.adapter: nn.Module = nn.Identity() if in_ch == 3 else InputAdapter(in_ch, self.size)
        self.in_ch, self.in_size = in_ch, in_size
        self.body = base.units
        for p in self.body.parameters():
            p.requires_grad_(True)

    def spec(self) -> dict:
        return {"arch": "finetune", "in_ch": self.in_ch, "in_size": self.in_size, "base": self.base_name}

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[1] != self.in_ch:
            raise ValueError(f"student expects {self.in_ch} input channels, got {x.shape[1]}")
        x = self.adapter(x)
        if x.shape[-1] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=x.shape[-1] > self.size)
        return self.body(x)

    def param_groups(self, lr: float) -> list[dict]:
        """Pretrained layers at lr/100 (Adam moves every weight by ~lr per step: 1e-4 wrecked the
        pretrained network within three steps, 1e-5 fine-tunes it), the new adapter at lr."""
        return [{"params": list(self.body.parameters()), "lr": lr / 100},
                {"params": list(self.adapter.parameters()), "lr": lr}]


def _splittable(model: nn.Module) -> nn.Module:
    if not hasattr(model, "units"):
        raise ValueError(f"a fine-tuned student needs a recogniser built of units (dlib's ResNet); {model.name} is not")
    return model


class VectorStudent(nn.Module):
    """MLP student for vector inputs (feature-domain defenses on embeddings)."""

    def __init__(self, dim_in: int, emb_dim: int = 128, hidden: int = 512) -> None:
        super().__init__()
        self._spec = {"arch": "vector", "dim_in": dim_in, "emb_dim": emb_dim, "hidden": hidden}
        self.net = nn.Sequential(nn.Linear(dim_in, hidden), nn.BatchNorm1d(hidden), nn.PReLU(), nn.Dropout(0.1),
                                 nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.PReLU(), nn.Linear(hidden, emb_dim))

    def spec(self) -> dict:
        return dict(self._spec)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.flatten(1))


#: Ψ's learning rate relative to the input affine's (see :mod:`faceveil.train.advface_student`)
SERVER_PART_BODY_LR = 1 / 50


class ServerPartStudent(nn.Module):
    """A trainable copy of the dlib ResNet's layers after ``at`` (Ψ), behind a per-channel affine
    ``x * scale + shift`` (identity at initialisation, so the untrained student *is* Ψ): AdvFace's
    offline server (:mod:`faceveil.train.advface_student`)."""

    def __init__(self, at: str = "res1", base: str | None = None) -> None:
        super().__init__()
        from faceveil.config import deployed_recognizer_name
        from faceveil.models import get_recognizer

        self.base_name = base or deployed_recognizer_name()
        base = get_recognizer(self.base_name)  # a fresh model: never shares weights with the teacher
        client, server = base.split(at)
        s = base.input_size
        with torch.no_grad():
            c = client(torch.zeros(1, 3, s, s)).shape[1]
        self.at = at
        self.scale = nn.Parameter(torch.ones(c))
        self.shift = nn.Parameter(torch.zeros(c))
        self.body = server
        for p in self.body.parameters():
            p.requires_grad_(True)

    def spec(self) -> dict:
        return {"arch": "server-part", "at": self.at, "base": self.base_name}

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.scale.numel():
            raise ValueError(f"server student expects [B,{self.scale.numel()},H,W] features, got {list(x.shape)}")
        return self.body(torch.addcmul(self.shift[:, None, None], x, self.scale[:, None, None]))

    def param_groups(self, lr: float) -> list[dict]:
        """Ψ's pretrained layers at ``lr * SERVER_PART_BODY_LR``, the new input affine at lr."""
        return [{"params": list(self.body.parameters()), "lr": lr * SERVER_PART_BODY_LR},
                {"params": [self.scale, self.shift], "lr": lr}]


_ARCHS = {
    "ir18": lambda s: StudentNet(in_ch=s["in_ch"], width=s["width"], emb_dim=s["emb_dim"], input_size=s["input_size"],
                                 blocks=tuple(s["blocks"])),
    "finetune": lambda s: FinetuneStudent(in_ch=s["in_ch"], in_size=s["in_size"], base=s.get("base")),
    "vector": lambda s: VectorStudent(s["dim_in"], s["emb_dim"], s["hidden"]),
    "server-part": lambda s: ServerPartStudent(s["at"], s.get("base")),
}


def build_student(spec: dict) -> nn.Module:
    """An untrained student from its :meth:`spec` (load the weights into it)."""
    from faceveil.errors import FaceveilDataError

    try:
        return _ARCHS[spec["arch"]](spec)
    except (KeyError, TypeError, ValueError) as e:
        raise FaceveilDataError(f"unknown or malformed student spec {spec!r} ({type(e).__name__}: {e})") from None
