"""``transrec``: a layer-by-layer mirror of the client network (the "transposed" decoder used to
invert split-learning features, e.g. He et al., "Model inversion attacks against collaborative
inference", ACSAC 2019, and the mirrored decoders of FaceObfuscator's / AdvFace's attackers).

With a ``client`` (e.g. ``recognizer.split("res1")[0]``) the decoder mirrors it in reverse order:

- ``Conv2d(cin, cout, k, s, p)`` -> ``ConvTranspose2d(cout, cin, k, s, p)`` with the output padding
  that restores the client's exact input size, then BN + ReLU (the mirror of the client's first
  conv outputs RGB logits);
- max / average pooling and other shape-only layers -> bilinear up-sampling to the layer's input size;
- residual blocks (any container other than ``nn.Sequential`` holding convolutions, e.g. dlib's
  ``ares`` / ``ares_down``, torchvision's BasicBlock) -> a mirrored residual block: the block's convs
  mirrored in reverse order on the main path, the shortcut up-sampled to the block's input size
  (plus a 1x1 conv when the channel count changes), added, ReLU;
- ``Linear(i, o)`` -> ``Linear(o, i)``; a 4-D -> 2-D layer (global pooling, flatten) -> a learned
  un-pooling ``Linear`` to the layer's input shape (for vector-output clients);
- element-wise layers (ReLU, BN, dlib ``affine``, input normalisation) have no mirror.

The client's input size is inferred (the largest size whose client output has the protected
shape) unless ``client_input_size`` is given; the layer shapes are traced on the ``meta`` device.
The mirror ends at the client's input resolution and is resized to ``target_size``, then a sigmoid.

Without a client, transrec falls back to a *generic* mirror of a conv encoder (a stack of
stride-2 convs): vectors -> fully connected stem to an ``8c x S/16 x S/16`` grid and four x2
de-convolutions; maps smaller than S -> a 3x3 conv and ``round(log2(S/H))`` x2 de-convolutions;
maps / images at least S in size -> resized to S, two 3x3 convs. Here ``c = 16 * width``.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from faceveil.attacks.base import ReconstructionAttack, register_attack
from faceveil.attacks.nets import (
    InputNorm,
    Resize,
    ToImage,
    VectorToGrid,
    base_size,
    channels_last,
    check_in_shape,
    conv_bn_act,
    resize,
    upconv_bn_relu,
)
from faceveil.errors import FaceveilDataError

# ---------------------------------------------------------------------------------------------
# Tracing the client
# ---------------------------------------------------------------------------------------------


def _units(m: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]]:
    """Flatten nested ``nn.Sequential`` containers into (name, unit) in forward order."""
    out: list[tuple[str, nn.Module]] = []
    for name, child in m.named_children():
        full = f"{prefix}{name}"
        if isinstance(child, nn.Sequential):
            out += _units(child, full + ".")
        else:
            out.append((full, child))
    return out


def _has_weights(m: nn.Module) -> bool:
    return any(isinstance(x, nn.Conv2d | nn.Linear) for x in m.modules())


class _Probe:
    """Runs a copy of the client for shapes only: on the meta device (no computation), or on the
    CPU with zeros when the client uses an operation the meta device lacks."""

    def __init__(self, client: nn.Module) -> None:
        self.model = copy.deepcopy(client)
        self.device = "meta"
        try:
            self.model.to("meta")
            conv = _first_conv(client)
            with torch.no_grad():
                self.model(torch.empty(1, conv.in_channels if conv is not None else 3, 64, 64, device="meta"))
        except (RuntimeError, NotImplementedError, TypeError, ValueError):
            self.model, self.device = copy.deepcopy(client), "cpu"

    def __call__(self, shape: tuple[int, ...]) -> Tensor:
        with torch.no_grad():
            return self.model(torch.zeros(1, *shape, device=self.device))


def trace_client(client: nn.Module, in_shape: tuple[int, ...]) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    """Per-sample (input shape, output shape) of every module of ``client`` for a ``[1, *in_shape]``
    input (traced on the meta device when possible)."""
    probe = _Probe(client)
    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
    hooks = []
    for name, mod in probe.model.named_modules():
        def hook(_m: nn.Module, args: tuple, out: Tensor, name: str = name) -> None:
            if args and isinstance(args[0], Tensor) and isinstance(out, Tensor):
                shapes[name] = (tuple(args[0].shape[1:]), tuple(out.shape[1:]))

        hooks.append(mod.register_forward_hook(hook))
    try:
        probe(in_shape)
    finally:
        for h in hooks:
            h.remove()
    return shapes


def _first_conv(client: nn.Module) -> nn.Conv2d | None:
    return next((m for m in client.modules() if isinstance(m, nn.Conv2d)), None)


def infer_client_input(client: nn.Module, out_shape: tuple[int, ...], max_size: int = 1024) -> tuple[int, int, int]:
    """The largest square input ``(C,s,s)`` (s <= max_size) whose client output has ``out_shape``."""
    conv = _first_conv(client)
    c = conv.in_channels if conv is not None else 3
    probe = _Probe(client)

    def out(s: int) -> tuple[int, ...] | None:
        try:
            return tuple(probe((c, s, s)).shape[1:])
        except (RuntimeError, ValueError):
            return None

    if len(out_shape) == 1:  # vector output: spatial size cannot be inferred
        raise FaceveilDataError("transrec: give client_input_size for a client with vector output")
    target_h = out_shape[1]
    lo, hi = 1, max_size  # largest s with out_h(s) <= target_h (out_h grows with s)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        o = out(mid)
        if o is None or o[1] <= target_h:
            lo = mid
        else:
            hi = mid - 1
    if out(lo) != tuple(out_shape):
        raise FaceveilDataError(f"transrec: no client input gives the protected shape {list(out_shape)}")
    return (c, lo, lo)


# ---------------------------------------------------------------------------------------------
# Mirrored layers
# ---------------------------------------------------------------------------------------------


def _pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


class MirrorConv(nn.Module):
    """``ConvTranspose2d`` mirroring a ``Conv2d`` (same kernel, stride, padding, dilation; channels
    swapped), with the output padding that gives the conv's input size ``out_hw``; when no valid
    output padding exists, the result is resized. ``act``: BN + ReLU after it, or raw output."""

    def __init__(self, conv: nn.Conv2d, cin: int, cout: int, in_hw: tuple[int, int], out_hw: tuple[int, int],
                 act: str = "bn_relu") -> None:
        super().__init__()
        k, s, d = _pair(conv.kernel_size), _pair(conv.stride), _pair(conv.dilation)
        if isinstance(conv.padding, str):  # "same" / "valid"
            p = tuple(d[i] * (k[i] - 1) // 2 for i in range(2)) if conv.padding == "same" else (0, 0)
        else:
            p = _pair(conv.padding)
        base = [(in_hw[i] - 1) * s[i] - 2 * p[i] + d[i] * (k[i] - 1) + 1 for i in range(2)]
        op = [out_hw[i] - base[i] for i in range(2)]
        ok = all(0 <= op[i] < max(s[i], d[i]) for i in range(2))
        self.deconv = nn.ConvTranspose2d(cin, cout, k, s, p, output_padding=tuple(op) if ok else 0, dilation=d,
                                         bias=act == "none")
        self.out_hw = tuple(out_hw)
        self.post: nn.Module = nn.Sequential(nn.BatchNorm2d(cout), nn.ReLU(inplace=True)) if act == "bn_relu" else \
            nn.BatchNorm2d(cout) if act == "bn" else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.post(resize(self.deconv(x), self.out_hw))


class MirrorResBlock(nn.Module):
    """Mirror of a residual block: main path = the block's convs mirrored in reverse, shortcut =
    up-sampling to the block's input size (+1x1 conv if channels change); ``relu(main + short)``."""

    def __init__(self, main: list[MirrorConv], cin: int, cout: int, out_hw: tuple[int, int], final: bool) -> None:
        super().__init__()
        self.main = nn.Sequential(*main)
        self.short = nn.Conv2d(cin, cout, 1, bias=False) if cin != cout else nn.Identity()
        self.out_hw = tuple(out_hw)
        self.final = final

    def forward(self, x: Tensor) -> Tensor:
        y = self.main(x) + self.short(resize(x, self.out_hw))
        return y if self.final else F.relu(y)


class Unpool(nn.Module):
    """Mirror of a 4-D -> 2-D layer (global pooling, flatten): Linear to ``C*h*w``, reshape, BN, ReLU."""

    def __init__(self, dim: int, shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.grid = VectorToGrid(dim, shape[0], (shape[1], shape[2]))

    def forward(self, x: Tensor) -> Tensor:
        return self.grid(x)


class Mirror(nn.Module):
    """The transposed network: input norm, (channel adapter), mirrored units, RGB logits resized to
    the target size, sigmoid."""

    def __init__(self, entry: nn.Module, layers: list[nn.Module], head: nn.Module | None, size: int) -> None:
        super().__init__()
        self.entry = entry
        self.layers = nn.Sequential(*layers)
        self.head = head if head is not None else nn.Identity()
        self.size = size

    def forward(self, x: Tensor) -> Tensor:
        y = self.head(self.layers(self.entry(x)))
        return resize(y, (self.size, self.size)).sigmoid()


def mirror_client(client: nn.Module, in_shape: tuple[int, ...], target_size: int, width: float = 1.0,
                  client_input_size: int | None = None) -> Mirror:
    """Build the mirror of ``client`` for protected data of per-sample shape ``in_shape``."""
    in_shape = check_in_shape(in_shape, "transrec")
    if client_input_size is not None:
        conv = _first_conv(client)
        cin = (conv.in_channels if conv is not None else 3, client_input_size, client_input_size)
    else:
        cin = infer_client_input(client, in_shape)
    shapes = trace_client(client, cin)
    units = _units(client)
    if not units or units[-1][0] not in shapes:
        raise FaceveilDataError("transrec: cannot trace the client network")
    out = shapes[units[-1][0]][1]
    if tuple(out) != tuple(in_shape):
        raise FaceveilDataError(f"transrec: the client outputs {list(out)} for a {list(cin)} input, "
                                f"but the protected data is {list(in_shape)}")

    def ch(c: int, exact: bool = False) -> int:
        return c if exact else max(1, round(c * width))

    layers: list[nn.Module] = []
    cur = ch(in_shape[0])
    entry: list[nn.Module] = [InputNorm(in_shape)]
    if cur != in_shape[0] and len(in_shape) == 3:
        entry.append(nn.Conv2d(in_shape[0], cur, 1))
    elif cur != in_shape[0]:
        entry.append(nn.Linear(in_shape[0], cur))
    to_image = False  # the last mirrored layer already outputs RGB logits
    for name, unit in reversed(units):
        if name not in shapes:
            continue
        s_in, s_out = shapes[name]
        is_first = tuple(s_in) == tuple(cin)  # reads the client's input image
        convs = [(n, m) for n, m in unit.named_modules() if isinstance(m, nn.Conv2d)]
        if isinstance(unit, nn.Conv2d):
            c_to = ch(s_in[0], exact=is_first)
            layers.append(MirrorConv(unit, cur, c_to, s_out[1:], s_in[1:], act="none" if is_first else "bn_relu"))
            cur, to_image = c_to, is_first
        elif isinstance(unit, nn.Linear):
            c_to = ch(s_in[0])
            layers += [nn.Linear(cur, c_to, bias=False), nn.BatchNorm1d(c_to), nn.ReLU(inplace=True)]
            cur = c_to
        elif convs and len(s_in) == 3 and len(s_out) == 3:  # residual block
            main: list[MirrorConv] = []
            c_blk = cur
            for i, (cname, conv) in enumerate(reversed(convs)):
                c_in_shape, c_out_shape = shapes[f"{name}.{cname}" if cname else name]
                last = i == len(convs) - 1
                c_to = ch(c_in_shape[0], exact=is_first and last)
                main.append(MirrorConv(conv, c_blk, c_to, c_out_shape[1:], c_in_shape[1:],
                                       act=("none" if is_first else "bn") if last else "bn_relu"))
                c_blk = c_to
            layers.append(MirrorResBlock(main, cur, c_blk, s_in[1:], final=is_first))
            cur, to_image = c_blk, is_first
        elif len(s_in) == 3 and len(s_out) == 1:  # global pooling / flatten
            c_to = ch(s_in[0])
            layers.append(Unpool(cur, (c_to, s_in[1], s_in[2])))
            cur = c_to
        elif len(s_in) == 3 and len(s_out) == 3 and (s_in[1:] != s_out[1:] or s_in[0] != s_out[0]):
            layers.append(Resize(tuple(s_in[1:])))  # pooling and other shape-only layers
            if s_in[0] != s_out[0]:
                c_to = ch(s_in[0])
                layers.append(conv_bn_act(cur, c_to, 1))
                cur = c_to
        elif _has_weights(unit) and s_in != s_out:
            raise FaceveilDataError(f"transrec: cannot mirror client layer {name} ({type(unit).__name__})")
        # element-wise layers (ReLU, BN, affine, input normalisation): no mirror
    head = None if to_image else nn.Conv2d(cur, 3, 3, 1, 1)
    return Mirror(nn.Sequential(*entry), layers, head, target_size)


def generic_mirror(in_shape: tuple[int, ...], target_size: int, width: float = 1.0) -> nn.Sequential:
    """Fallback without a client: the mirror of a generic stride-2 conv encoder (module docstring)."""
    in_shape = check_in_shape(in_shape, "transrec")
    c = max(4, round(16 * width))
    if len(in_shape) == 1:
        grid = base_size(target_size, 16)
        layers: list[nn.Module] = [VectorToGrid(in_shape[0], 8 * c, grid)]
        cur = 8 * c
        for _ in range(3):
            layers.append(upconv_bn_relu(cur, cur // 2))
            cur //= 2
        return nn.Sequential(InputNorm(in_shape), *layers, ToImage(cur, target_size, up=True))
    _, h, w = in_shape
    n = max(0, round(math.log2(target_size / min(h, w)))) if min(h, w) < target_size else 0
    layers = [InputNorm(in_shape)]
    if n == 0:
        layers += [Resize(target_size), conv_bn_act(in_shape[0], c), conv_bn_act(c, c)]
        return nn.Sequential(*layers, ToImage(c, target_size))
    cur = c * 2 ** min(n, 3)
    layers.append(conv_bn_act(in_shape[0], cur))
    for _ in range(n - 1):
        layers.append(upconv_bn_relu(cur, max(c, cur // 2)))
        cur = max(c, cur // 2)
    return nn.Sequential(*layers, ToImage(cur, target_size, up=True))


@register_attack("transrec")
class TransRec(ReconstructionAttack):
    """Transposed-client reconstruction attack (see the module docstring), L1 loss by default.

    ``client``: the client network to mirror (None: generic conv-encoder mirror); ``width``:
    channel multiplier of the mirrored layers (1.0 = the client's own channel counts);
    ``client_input_size``: the client's input side (inferred when None)."""

    needs = frozenset({"pairs", "client_network"})

    def __init__(self, *, client: nn.Module | None = None, width: float = 1.0, client_input_size: int | None = None,
                 **kw) -> None:
        super().__init__(**kw)
        self.client, self.width, self.client_input_size = client, width, client_input_size

    def config_value(self, param: str):
        """The client network enters the config as a description of its units (not its weights)."""
        if param != "client":
            return super().config_value(param)
        if self.client is None:
            return None
        return [f"{type(m).__name__}" + (f"({m.in_channels},{m.out_channels},k{_pair(m.kernel_size)[0]},"
                                         f"s{_pair(m.stride)[0]})" if isinstance(m, nn.Conv2d) else "")
                for _, m in _units(self.client)]

    def build(self, in_shape: tuple[int, ...]) -> nn.Module:
        if self.client is None:
            return channels_last(generic_mirror(in_shape, self.target_size, self.width))
        return channels_last(mirror_client(self.client, in_shape, self.target_size, self.width, self.client_input_size))
