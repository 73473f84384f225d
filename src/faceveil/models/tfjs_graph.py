"""A TF.js model reader and graph-model interpreter written in torch ops.

Two formats are read:

- the *weights manifest* shared by all TF.js models (``weightsManifest`` of a ``model.json`` or a
  face-api ``*-weights_manifest.json``): groups of binary shards holding named tensors, possibly
  quantised (uint8/uint16 affine ``q*scale + min``, or float16) — :func:`decode_weights`
  implements tfjs-core ``io.decodeWeights``;
- the *graph model* (``format: graph-model``): a TensorFlow GraphDef as JSON
  (``modelTopology.node``), executed node by node by :class:`TFJSGraph` with the semantics of the
  TF.js CPU kernels (TF "SAME" padding, fused conv/matmul epilogues, ...).

Tensors keep TensorFlow's logical layout (NHWC); convolutions and pools see a permuted view
(``x.permute(0, 3, 1, 2)``), so no layout bookkeeping is needed and every op is differentiable
and batched. Graph constants become (frozen) parameters, so ``.double()`` / ``.to()`` work.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from faceveil.errors import FaceveilDataError

# ---------------------------------------------------------------------------------------------
# Weights manifest
# ---------------------------------------------------------------------------------------------

_DTYPES = {"float32": np.float32, "int32": np.int32, "bool": np.bool_, "uint8": np.uint8,
           "uint16": np.uint16, "float16": np.float16}


def dequantize(q: np.ndarray, quantization: dict, dtype: str = "float32") -> np.ndarray:
    """tfjs-core ``decodeWeight`` for one quantised tensor: uint8/uint16 -> ``q*scale + min`` (in
    double precision, then float32; int32 targets are rounded half up), float16 -> float32."""
    qd = quantization["dtype"]
    if qd in ("uint8", "uint16"):
        if "scale" not in quantization or "min" not in quantization:
            raise FaceveilDataError(f"{qd} quantisation without scale/min: {quantization}")
        v = q.astype(np.float64) * float(quantization["scale"]) + float(quantization["min"])
        if dtype == "int32":
            return np.floor(v + 0.5).astype(np.int32)
        return v.astype(np.float32)
    if qd == "float16":
        if dtype != "float32":
            raise FaceveilDataError(f"float16 quantisation of a {dtype} weight is not supported")
        return q.astype(np.float32)
    raise FaceveilDataError(f"unknown quantisation dtype {qd!r}")


def decode_weights(manifest: Sequence[dict], read: Callable[[str], bytes]) -> dict[str, np.ndarray]:
    """Decode a TF.js weights manifest into named numpy arrays (tfjs-core ``io.decodeWeights``).

    ``manifest`` is a list of groups ``{"paths": [...], "weights": [{name, shape, dtype,
    quantization?}]}``; ``read(path)`` returns a shard's bytes. The shards of a group are
    concatenated and the weights laid out back to back in manifest order.
    """
    out: dict[str, np.ndarray] = {}
    for group in manifest:
        buf = b"".join(read(p) for p in group["paths"])
        off = 0
        for spec in group["weights"]:
            name, dtype = spec["name"], spec["dtype"]
            shape = [int(s) for s in spec["shape"]]
            n = int(np.prod(shape)) if shape else 1
            quant = spec.get("quantization")
            store = quant["dtype"] if quant else dtype
            if store not in _DTYPES:
                raise FaceveilDataError(f"weight {name!r}: unsupported dtype {store!r}")
            nbytes = n * np.dtype(_DTYPES[store]).itemsize
            if off + nbytes > len(buf):
                raise FaceveilDataError(
                    f"weight {name!r} needs bytes {off}..{off + nbytes} but the shards of "
                    f"{group['paths']} hold only {len(buf)} bytes"
                )
            raw = np.frombuffer(buf, dtype=_DTYPES[store], count=n, offset=off)
            off += nbytes
            arr = dequantize(raw, quant, dtype) if quant else raw.astype(_DTYPES[dtype])
            out[name] = arr.reshape(shape)
        if off != len(buf):
            raise FaceveilDataError(f"shards {group['paths']}: {len(buf) - off} bytes left unused")
    return out


def load_manifest_weights(manifest_path: str | Path) -> dict[str, np.ndarray]:
    """Weights of a face-api style ``*-weights_manifest.json`` (shards in the same folder)."""
    p = Path(manifest_path)
    manifest = json.loads(p.read_text())
    return decode_weights(manifest, lambda name: (p.parent / name).read_bytes())


# ---------------------------------------------------------------------------------------------
# TensorFlow padding / conv helpers (also used by the face-api port)
# ---------------------------------------------------------------------------------------------


def same_pads(size: int, k: int, s: int, d: int = 1) -> tuple[int, int]:
    """TF "SAME" padding for one spatial dim: total = max((ceil(n/s)-1)*s + (k-1)*d + 1 - n, 0),
    ``before = total // 2`` and the extra pixel goes after (bottom/right)."""
    out = -(-size // s)
    total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
    return total // 2, total - total // 2


def _pad_spec(x: Tensor, k: tuple[int, int], s: tuple[int, int], d: tuple[int, int],
              padding: str) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
    """Split TF padding of an NCHW tensor into a symmetric part (passed to the torch op) and an
    asymmetric rest ``(left, right, top, bottom)`` to apply with ``F.pad``."""
    if padding == "VALID":
        return (0, 0), (0, 0, 0, 0)
    if padding != "SAME":
        raise FaceveilDataError(f"unsupported padding {padding!r}")
    (t, b), (lft, r) = (same_pads(x.shape[2], k[0], s[0], d[0]),
                        same_pads(x.shape[3], k[1], s[1], d[1]))
    sym = (min(t, b), min(lft, r))
    return sym, (lft - sym[1], r - sym[1], t - sym[0], b - sym[0])


def conv2d_tf(x: Tensor, w: Tensor, bias: Tensor | None, stride: tuple[int, int], padding: str,
              dilation: tuple[int, int] = (1, 1), groups: int = 1) -> Tensor:
    """``tf.nn.conv2d`` on NCHW tensors with TF padding (asymmetric SAME handled exactly)."""
    sym, rest = _pad_spec(x, (w.shape[2], w.shape[3]), stride, dilation, padding)
    if any(rest):
        x = F.pad(x, rest)
    return F.conv2d(x, w, bias, stride, sym, dilation, groups)


def pool2d_tf(x: Tensor, kind: str, k: tuple[int, int], stride: tuple[int, int], padding: str) -> Tensor:
    """TF max/avg pooling on NCHW tensors: SAME max-pool pads with -inf; SAME avg-pool averages over
    the valid pixels only (as TF and the TF.js CPU kernels do)."""
    sym, rest = _pad_spec(x, k, stride, (1, 1), padding)
    pads = (sym[1], sym[1], sym[0], sym[0])
    pads = (pads[0] + rest[0], pads[1] + rest[1], pads[2] + rest[2], pads[3] + rest[3])
    if kind == "max":
        if any(pads):
            x = F.pad(x, pads, value=-math.inf)
        return F.max_pool2d(x, k, stride)
    if not any(pads):
        return F.avg_pool2d(x, k, stride)
    total = F.avg_pool2d(F.pad(x, pads), k, stride, divisor_override=1)
    ones = torch.ones(1, 1, x.shape[2], x.shape[3], dtype=x.dtype, device=x.device)
    count = F.avg_pool2d(F.pad(ones, pads), k, stride, divisor_override=1)
    return total / count


def _lerp_gather(x: Tensor, rows: np.ndarray, cols: np.ndarray) -> Tensor:
    """Bilinear samples of NCHW ``x`` at fractional source rows/cols (float64 arrays), combined in
    the TF.js CPU kernels' order: ``top = tl + (tr-tl)*fx``, ``bottom = ...``, ``top + (bottom-top)*fy``."""
    h, w = x.shape[2], x.shape[3]
    r0 = np.clip(np.floor(rows), 0, h - 1).astype(np.int64)
    r1 = np.clip(np.ceil(rows), 0, h - 1).astype(np.int64)
    c0 = np.clip(np.floor(cols), 0, w - 1).astype(np.int64)
    c1 = np.clip(np.ceil(cols), 0, w - 1).astype(np.int64)
    fy = torch.as_tensor(rows - np.maximum(np.floor(rows), 0), dtype=x.dtype, device=x.device).view(-1, 1)
    fx = torch.as_tensor(cols - np.maximum(np.floor(cols), 0), dtype=x.dtype, device=x.device)

    def take(r: np.ndarray, c: np.ndarray) -> Tensor:
        t = x.index_select(2, torch.as_tensor(r, device=x.device))
        return t.index_select(3, torch.as_tensor(c, device=x.device))

    top = take(r0, c0) + (take(r0, c1) - take(r0, c0)) * fx
    bottom = take(r1, c0) + (take(r1, c1) - take(r1, c0)) * fx
    return top + (bottom - top) * fy


def resize_bilinear_tf(x: Tensor, size: tuple[int, int], align_corners: bool = False,
                       half_pixel_centers: bool = False) -> Tensor:
    """``tf.image.resizeBilinear`` (TF.js CPU kernel) on NCHW ``x``. The default is TF's legacy
    mode used by Human: source = ``dst * in/out`` (no half-pixel offset, no antialiasing)."""
    (h, w), (nh, nw) = x.shape[2:], size

    def src(n_in: int, n_out: int) -> np.ndarray:
        ein = n_in - 1 if align_corners and n_out > 1 else n_in
        eout = n_out - 1 if align_corners and n_out > 1 else n_out
        ratio = ein / eout
        i = np.arange(n_out, dtype=np.float64)
        return ratio * (i + 0.5) - 0.5 if half_pixel_centers else ratio * i

    return _lerp_gather(x, src(h, nh), src(w, nw))


def crop_and_resize_tf(x: Tensor, box: Sequence[float], size: tuple[int, int],
                       extrapolation_value: float = 0.0) -> Tensor:
    """``tf.image.cropAndResize`` (bilinear, TF.js CPU kernel) of every image of NCHW ``x`` with
    the same normalised box ``(y1, x1, y2, x2)``; samples outside the image get
    ``extrapolation_value``."""
    y1, x1, y2, x2 = (float(v) for v in np.asarray(box, dtype=np.float32))  # boxes are float32 in TF.js
    h, w = x.shape[2], x.shape[3]
    ch, cw = size

    def pos(a: float, b: float, n_in: int, n_out: int) -> np.ndarray:
        if n_out > 1:
            return a * (n_in - 1) + np.arange(n_out, dtype=np.float64) * ((b - a) * (n_in - 1) / (n_out - 1))
        return np.full(1, 0.5 * (a + b) * (n_in - 1))

    rows, cols = pos(y1, y2, h, ch), pos(x1, x2, w, cw)
    out = _lerp_gather(x, rows, cols)
    valid_r = (rows >= 0) & (rows <= h - 1)
    valid_c = (cols >= 0) & (cols <= w - 1)
    if not (valid_r.all() and valid_c.all()):
        mask = torch.as_tensor(np.outer(valid_r, valid_c), device=x.device)
        out = torch.where(mask, out, torch.full_like(out, extrapolation_value))
    return out


def hwio_to_oihw(w: Tensor) -> Tensor:
    """TF conv filter ``[kh, kw, in, out]`` -> torch ``[out, in, kh, kw]``."""
    return w.permute(3, 2, 0, 1).contiguous()


def depthwise_to_oihw(w: Tensor) -> Tensor:
    """TF depthwise filter ``[kh, kw, in, mult]`` -> torch grouped ``[in*mult, 1, kh, kw]``
    (output channel ``c*mult + m``, as TF orders them)."""
    kh, kw, cin, mult = w.shape
    return w.permute(2, 3, 0, 1).reshape(cin * mult, 1, kh, kw).contiguous()


# ---------------------------------------------------------------------------------------------
# Graph model
# ---------------------------------------------------------------------------------------------


def _attr(a: dict) -> Any:
    """Decode one GraphDef attr value from its JSON form."""
    if "list" in a:
        lst = a["list"]
        if "i" in lst:
            return [int(v) for v in lst["i"]]
        if "f" in lst:
            return [float(v) for v in lst["f"]]
        if "s" in lst:
            return [base64.b64decode(v).decode() for v in lst["s"]]
        if "b" in lst:
            return [bool(v) for v in lst["b"]]
        return []
    if "s" in a:
        return base64.b64decode(a["s"]).decode()
    if "i" in a:
        return int(a["i"])
    if "f" in a:
        return float(a["f"])
    if "b" in a:
        return bool(a["b"])
    if "type" in a:
        return a["type"]
    return a


@dataclass
class Node:
    """One GraphDef node: data inputs (control inputs dropped) and decoded attributes."""

    name: str
    op: str
    inputs: list[str]
    attr: dict[str, Any] = field(default_factory=dict)


def _input_name(s: str) -> str:
    if s.endswith(":0"):
        s = s[:-2]
    return s


_UNARY: dict[str, Callable[[Tensor], Tensor]] = {
    "Relu": F.relu, "Relu6": lambda x: x.clamp(0.0, 6.0), "Abs": torch.abs, "Neg": torch.neg,
    "Square": torch.square, "Sqrt": torch.sqrt, "Rsqrt": torch.rsqrt, "Exp": torch.exp,
    "Log": torch.log, "Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Elu": F.elu,
    "Reciprocal": torch.reciprocal, "Floor": torch.floor, "Ceil": torch.ceil,
    "Identity": lambda x: x, "StopGradient": lambda x: x, "Selu": F.selu,
    "Softplus": F.softplus, "Sin": torch.sin, "Cos": torch.cos,
}

_BINARY: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "Add": torch.add, "AddV2": torch.add, "Sub": torch.sub, "Mul": torch.mul,
    "RealDiv": torch.div, "Div": torch.div, "Maximum": torch.maximum, "Minimum": torch.minimum,
    "Pow": torch.pow, "SquaredDifference": lambda a, b: torch.square(a - b),
    "FloorDiv": lambda a, b: torch.div(a, b, rounding_mode="floor"),
}

_REDUCE = {"Mean": torch.mean, "Sum": torch.sum, "Max": torch.amax, "Min": torch.amin,
           "Prod": None}

_TF_DTYPES = {"DT_FLOAT": torch.float32, "DT_INT32": torch.int32, "DT_BOOL": torch.bool,
              "DT_INT64": torch.int64}


def _activation(name: str, x: Tensor, extra: Tensor | None, attr: dict) -> Tensor:
    if name == "Relu":
        return F.relu(x)
    if name == "Relu6":
        return x.clamp(0.0, 6.0)
    if name == "Prelu":
        assert extra is not None
        return torch.where(x >= 0, x, x * extra)  # TF.js prelu: x<0 ? alpha*x : x
    if name == "LeakyRelu":
        return F.leaky_relu(x, attr.get("leakyrelu_alpha", 0.2))
    if name == "Elu":
        return F.elu(x)
    if name == "Sigmoid":
        return torch.sigmoid(x)
    raise FaceveilDataError(f"unsupported fused activation {name!r}")


class TFJSGraph(nn.Module):
    """Executes a TF.js graph model (``model.json`` + weights) with torch ops.

    ``forward(x)`` feeds the (single) placeholder with an NHWC tensor and returns the output
    tensor (or a tuple when the graph has several outputs). :meth:`run` evaluates any nodes given
    any feeds, which is what :meth:`part` (graph cutting for split computing) is built on.
    """

    def __init__(self, model_json: dict, weights: dict[str, np.ndarray], outputs: Sequence[str] | None = None,
                 source: str = "<model.json>") -> None:
        super().__init__()
        self.source = source
        topo = model_json["modelTopology"]
        if topo.get("library", {}).get("function"):
            raise FaceveilDataError(f"{source}: graph functions (control flow) are not supported")
        self.nodes: dict[str, Node] = {}
        for n in topo["node"]:
            inputs = [_input_name(i) for i in n.get("input", []) if not i.startswith("^")]
            attr = {k: _attr(v) for k, v in n.get("attr", {}).items() if k != "value"}
            self.nodes[n["name"]] = Node(n["name"], n["op"], inputs, attr)
        self.placeholders = [n.name for n in self.nodes.values() if n.op == "Placeholder"]
        self.outputs = list(outputs) if outputs else self._default_outputs(model_json)
        for o in self.outputs:
            if o not in self.nodes:
                raise FaceveilDataError(f"{source}: output node {o!r} not in the graph")
        # constants: float ones become frozen parameters (so .double()/.to() apply); others stay numpy
        self.consts = nn.ParameterDict()
        self._const_key: dict[str, str] = {}
        self._static: dict[str, np.ndarray] = {}
        conv_filters = {n.inputs[1]: n.op for n in self.nodes.values()
                        if n.op in ("Conv2D", "_FusedConv2D", "DepthwiseConv2dNative",
                                    "FusedDepthwiseConv2dNative")}
        other_uses = {i for n in self.nodes.values() for k, i in enumerate(n.inputs)
                      if not (k == 1 and n.op in ("Conv2D", "_FusedConv2D", "DepthwiseConv2dNative",
                                                  "FusedDepthwiseConv2dNative"))}
        for n in self.nodes.values():
            if n.op != "Const":
                continue
            if n.name not in weights:
                raise FaceveilDataError(f"{source}: constant {n.name!r} has no weights in the manifest")
            arr = weights[n.name]
            if arr.dtype != np.float32:
                self._static[n.name] = arr
                continue
            t = torch.from_numpy(np.ascontiguousarray(arr))
            if n.name in conv_filters:
                op = conv_filters[n.name]
                conv_w = hwio_to_oihw(t) if op in ("Conv2D", "_FusedConv2D") else depthwise_to_oihw(t)
                self._add_const(n.name + ":torch", conv_w)
            if n.name not in conv_filters or n.name in other_uses:
                self._add_const(n.name, t)
        self._order = self._topo_order()
        for n in self._order:
            known = n.op == "Const" or n.op in self._OPS or n.op in _UNARY or n.op in _BINARY or n.op in _REDUCE
            if not known:
                raise FaceveilDataError(f"{source}: unsupported op {n.op!r} (node {n.name!r})")

    # --- construction helpers ------------------------------------------------------------------
    def _add_const(self, name: str, t: Tensor) -> None:
        key = f"c{len(self._const_key)}"
        self._const_key[name] = key
        self.consts[key] = nn.Parameter(t.clone(), requires_grad=False)

    def _default_outputs(self, model_json: dict) -> list[str]:
        sig = model_json.get("signature") or model_json.get("userDefinedMetadata", {}).get("signature") or {}
        names = [_input_name(v.get("name", k)) for k, v in sig.get("outputs", {}).items()]
        if names and all(n in self.nodes for n in names):
            return names
        used = {i for n in self.nodes.values() for i in n.inputs}
        return [n.name for n in self.nodes.values() if n.name not in used and n.op not in ("Const", "NoOp")]

    def _topo_order(self) -> list[Node]:
        order: list[Node] = []
        seen: set[str] = set()
        for out in self.outputs:
            stack: list[tuple[str, bool]] = [(out, False)]
            while stack:
                name, done = stack.pop()
                if done:
                    order.append(self.nodes[name])
                    continue
                if name in seen:
                    continue
                seen.add(name)
                if name not in self.nodes:
                    raise FaceveilDataError(f"{self.source}: node input {name!r} does not exist")
                stack.append((name, True))
                for i in reversed(self.nodes[name].inputs):
                    if i not in seen:
                        stack.append((i, False))
        return order

    # --- introspection -------------------------------------------------------------------------
    def node_names(self) -> list[str]:
        """Non-constant nodes in execution order."""
        return [n.name for n in self._order if n.op not in ("Const",)]

    def ancestors(self, name: str) -> set[str]:
        """All non-constant nodes ``name`` depends on (itself included)."""
        out: set[str] = set()
        stack = [name]
        while stack:
            v = stack.pop()
            if v in out or self.nodes[v].op == "Const":
                continue
            out.add(v)
            stack.extend(self.nodes[v].inputs)
        return out

    def cut_points(self, outputs: Sequence[str] | None = None) -> list[str]:
        """Nodes whose output alone carries everything needed to compute ``outputs`` (default: the
        graph outputs): cutting there gives a client (placeholder -> node) and a server
        (node -> outputs) that exchange exactly one tensor. In execution order."""
        outs = list(outputs or self.outputs)
        needed: set[str] = set()
        for o in outs:
            needed |= self.ancestors(o)
        names = [v for v in self.node_names() if v in needed]
        consumers: dict[str, list[str]] = {v: [] for v in names}
        for v in names:
            for i in self.nodes[v].inputs:
                if i in consumers:
                    consumers[i].append(v)
        cuts = []
        for v in names:
            if self.nodes[v].op == "Placeholder" or v in outs:
                continue
            client = self.ancestors(v)
            if not set(self.placeholders) & client:
                continue
            ok = all(c in client for u in client - {v} for c in consumers[u])
            if ok and not any(o in client for o in outs):
                cuts.append(v)
        return cuts

    # --- execution -----------------------------------------------------------------------------
    def _value(self, name: str, env: dict[str, Any]) -> Any:
        if name in env:
            return env[name]
        if name in self._const_key:
            return self.consts[self._const_key[name]]
        if name in self._static:
            return self._static[name]
        if name + ":torch" in self._const_key:
            return None  # a conv filter kept only in torch layout (read by _conv)
        raise FaceveilDataError(f"{self.source}: value of {name!r} is not available")

    def _static_list(self, v: Any) -> list:
        if isinstance(v, Tensor):
            return v.detach().cpu().reshape(-1).tolist()
        return np.asarray(v).reshape(-1).tolist()

    def _as_tensor(self, v: Any, like: Tensor | None) -> Tensor:
        if isinstance(v, Tensor):
            return v
        t = torch.from_numpy(np.asarray(v))
        if like is not None and t.dtype.is_floating_point is False and like.dtype.is_floating_point:
            t = t.to(like.dtype)
        return t.to(like.device) if like is not None else t

    def run(self, feeds: dict[str, Tensor], fetches: Sequence[str]) -> list[Tensor]:
        """Evaluate ``fetches`` given values for some nodes (``feeds``: placeholders, or any node
        to resume the graph from there). Only the nodes needed are computed."""
        needed: set[str] = set()
        stack = list(fetches)
        while stack:
            v = stack.pop()
            if v in needed or v in feeds:
                continue
            node = self.nodes.get(v)
            if node is None:
                raise FaceveilDataError(f"{self.source}: unknown node {v!r}")
            if node.op == "Placeholder":
                raise FaceveilDataError(f"{self.source}: placeholder {v!r} needs a value")
            needed.add(v)
            stack.extend(node.inputs)
        env: dict[str, Any] = dict(feeds)
        last_use: dict[str, int] = {}
        steps = [n for n in self._order if n.name in needed and n.op != "Const"]
        for k, n in enumerate(steps):
            for i in n.inputs:
                last_use[i] = k
        keep = set(fetches) | set(feeds)
        for k, n in enumerate(steps):
            env[n.name] = self._exec(n, env)
            for i in n.inputs:  # free intermediates as soon as they are dead
                if last_use.get(i) == k and i not in keep and i in env:
                    del env[i]
        return [env[f] if f in env else self._value(f, env) for f in fetches]

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, ...]:
        if len(self.placeholders) != 1:
            raise FaceveilDataError(f"{self.source}: forward() needs exactly one placeholder; use run()")
        outs = self.run({self.placeholders[0]: x}, self.outputs)
        return outs[0] if len(outs) == 1 else tuple(outs)

    def part(self, start: str | None, end: str | Sequence[str] | None) -> GraphPart:
        """A module computing the graph from node ``start`` (default: the placeholder) to ``end``
        (default: the outputs); it shares this graph's constants."""
        start = start or self.placeholders[0]
        fetch = [end] if isinstance(end, str) else list(end or self.outputs)
        return GraphPart(self, start, fetch)

    # --- ops -----------------------------------------------------------------------------------
    def _exec(self, n: Node, env: dict[str, Any]) -> Any:
        args = [self._value(i, env) for i in n.inputs]
        if n.op in _UNARY:
            return _UNARY[n.op](args[0])
        if n.op in _BINARY:
            a, b = args
            like = a if isinstance(a, Tensor) else b if isinstance(b, Tensor) else None
            return _BINARY[n.op](self._as_tensor(a, like), self._as_tensor(b, like))
        if n.op in _REDUCE:
            return self._reduce(n, args)
        return self._OPS[n.op](self, n, args)

    def _filter(self, n: Node, raw: Tensor | None) -> Tensor:
        """The conv filter in torch layout (precomputed for constant filters)."""
        key = self._const_key.get(n.inputs[1] + ":torch")
        if key is not None:
            return self.consts[key]
        assert raw is not None
        return depthwise_to_oihw(raw) if "Depthwise" in n.op else hwio_to_oihw(raw)

    def _conv(self, n: Node, args: list) -> Tensor:
        x = args[0].permute(0, 3, 1, 2)
        w = self._filter(n, args[1])
        if n.attr.get("data_format", "NHWC") != "NHWC":
            raise FaceveilDataError(f"{n.name}: only NHWC graphs are supported")
        _, sh, sw, _ = n.attr.get("strides", [1, 1, 1, 1])
        dl = n.attr.get("dilations", [1, 1, 1, 1])
        padding = n.attr.get("padding", "VALID")
        if padding == "EXPLICIT":
            p = n.attr["explicit_paddings"]
            x = F.pad(x, (p[4], p[5], p[2], p[3]))
            padding = "VALID"
        groups = x.shape[1] if "Depthwise" in n.op else 1
        fused = n.attr.get("fused_ops", [])
        bias = None
        if fused:
            if fused[0] != "BiasAdd":
                raise FaceveilDataError(f"{n.name}: unsupported fused ops {fused}")
            bias = args[2]
        y = conv2d_tf(x, w, bias, (sh, sw), padding, (dl[1], dl[2]), groups).permute(0, 2, 3, 1)
        if len(fused) > 1:
            extra = args[3].reshape(-1) if len(args) > 3 else None
            y = _activation(fused[1], y, extra, n.attr)
        return y

    def _pool(self, n: Node, args: list) -> Tensor:
        _, kh, kw, _ = n.attr["ksize"]
        _, sh, sw, _ = n.attr["strides"]
        kind = "max" if n.op == "MaxPool" else "avg"
        x = args[0].permute(0, 3, 1, 2)
        return pool2d_tf(x, kind, (kh, kw), (sh, sw), n.attr.get("padding", "VALID")).permute(0, 2, 3, 1)

    def _matmul(self, n: Node, args: list) -> Tensor:
        a, b = args[0], args[1]
        if n.attr.get("transpose_a"):
            a = a.transpose(-1, -2)
        if n.attr.get("transpose_b"):
            b = b.transpose(-1, -2)
        y = a @ b
        fused = n.attr.get("fused_ops", [])
        if fused:
            if fused[0] != "BiasAdd":
                raise FaceveilDataError(f"{n.name}: unsupported fused ops {fused}")
            y = y + args[2]
            if len(fused) > 1:
                y = _activation(fused[1], y, args[3] if len(args) > 3 else None, n.attr)
        return y

    def _reduce(self, n: Node, args: list) -> Tensor:
        x = args[0]
        axes = [a % x.ndim for a in self._static_list(args[1])]
        keep = bool(n.attr.get("keep_dims", False))
        if not axes:
            return x
        if n.op == "Prod":
            for a in sorted(axes, reverse=True):
                x = x.prod(dim=a, keepdim=keep)
            return x
        return _REDUCE[n.op](x, dim=axes, keepdim=keep)

    def _softmax(self, n: Node, args: list) -> Tensor:
        return torch.softmax(args[0], dim=-1)

    def _bias_add(self, n: Node, args: list) -> Tensor:
        return args[0] + args[1]

    def _prelu(self, n: Node, args: list) -> Tensor:
        return _activation("Prelu", args[0], args[1], n.attr)

    def _leaky(self, n: Node, args: list) -> Tensor:
        return F.leaky_relu(args[0], n.attr.get("alpha", 0.2))

    def _reshape(self, n: Node, args: list) -> Tensor:
        return args[0].reshape([int(s) for s in self._static_list(args[1])])

    def _squeeze(self, n: Node, args: list) -> Tensor:
        x = args[0]
        dims = n.attr.get("squeeze_dims") or n.attr.get("axis")
        if not dims:
            dims = [i for i, s in enumerate(x.shape) if s == 1]
        for d in sorted((d % x.ndim for d in dims), reverse=True):
            x = x.squeeze(d)
        return x

    def _expand_dims(self, n: Node, args: list) -> Tensor:
        d = int(self._static_list(args[1])[0])
        return args[0].unsqueeze(d if d >= 0 else args[0].ndim + 1 + d)

    def _transpose(self, n: Node, args: list) -> Tensor:
        return args[0].permute([int(p) for p in self._static_list(args[1])])

    def _concat(self, n: Node, args: list) -> Tensor:
        axis = int(self._static_list(args[-1])[0])
        ts = [self._as_tensor(a, None) for a in args[:-1]]
        like = next((t for t in ts if t.dtype.is_floating_point), ts[0])
        return torch.cat([t.to(like.dtype) for t in ts], dim=axis)

    def _pack(self, n: Node, args: list) -> Tensor:
        ts = [self._as_tensor(a, None) for a in args]
        return torch.stack(ts, dim=int(n.attr.get("axis", 0)))

    def _pad(self, n: Node, args: list) -> Tensor:
        x = args[0]
        p = [int(v) for v in self._static_list(args[1])]
        value = float(self._static_list(args[2])[0]) if len(args) > 2 else 0.0
        torch_pads: list[int] = []
        for d in reversed(range(x.ndim)):
            torch_pads += [p[2 * d], p[2 * d + 1]]
        return F.pad(x, torch_pads, value=value)

    def _cast(self, n: Node, args: list) -> Any:
        dt = _TF_DTYPES.get(n.attr.get("DstT", "DT_FLOAT"))
        if dt is None:
            raise FaceveilDataError(f"{n.name}: unsupported cast to {n.attr.get('DstT')}")
        x = args[0]
        if isinstance(x, Tensor):
            return x if dt.is_floating_point and x.dtype.is_floating_point else x.to(dt)
        return torch.from_numpy(np.asarray(x)).to(dt)

    def _shape(self, n: Node, args: list) -> np.ndarray:
        return np.asarray(list(args[0].shape), dtype=np.int32)

    def _strided_slice(self, n: Node, args: list) -> Tensor:
        x = args[0]
        begin, end, strides = (self._static_list(a) for a in args[1:4])
        bm, em = n.attr.get("begin_mask", 0), n.attr.get("end_mask", 0)
        if n.attr.get("ellipsis_mask", 0) or n.attr.get("new_axis_mask", 0):
            raise FaceveilDataError(f"{n.name}: StridedSlice with ellipsis/new_axis masks is not supported")
        sm = n.attr.get("shrink_axis_mask", 0)
        idx: list[Any] = []
        for d in range(len(begin)):
            if sm >> d & 1:
                idx.append(int(begin[d]))
                continue
            b = None if bm >> d & 1 else int(begin[d])
            e = None if em >> d & 1 else int(end[d])
            s = int(strides[d])
            if s <= 0:
                raise FaceveilDataError(f"{n.name}: negative strides are not supported")
            idx.append(slice(b, e, s))
        if not isinstance(x, Tensor):
            return torch.from_numpy(np.asarray(x)[tuple(idx)])
        return x[tuple(idx)]

    def _resize_bilinear(self, n: Node, args: list) -> Tensor:
        size = [int(v) for v in self._static_list(args[1])]
        y = resize_bilinear_tf(args[0].permute(0, 3, 1, 2), (size[0], size[1]),
                               bool(n.attr.get("align_corners", False)),
                               bool(n.attr.get("half_pixel_centers", False)))
        return y.permute(0, 2, 3, 1)

    def _fused_bn(self, n: Node, args: list) -> Tensor:
        x, scale, offset, mean, var = args[:5]
        eps = float(n.attr.get("epsilon", 1e-3))
        return (x - mean) * torch.rsqrt(var + eps) * scale + offset

    def _add_n(self, n: Node, args: list) -> Tensor:
        out = args[0]
        for a in args[1:]:
            out = out + a
        return out

    def _placeholder(self, n: Node, args: list) -> Tensor:
        raise FaceveilDataError(f"placeholder {n.name!r} needs a value")

    _OPS: dict[str, Callable[[TFJSGraph, Node, list], Any]] = {
        "Conv2D": _conv, "_FusedConv2D": _conv, "DepthwiseConv2dNative": _conv,
        "FusedDepthwiseConv2dNative": _conv, "MaxPool": _pool, "AvgPool": _pool,
        "MatMul": _matmul, "_FusedMatMul": _matmul, "BatchMatMulV2": _matmul,
        "Softmax": _softmax, "BiasAdd": _bias_add, "Prelu": _prelu, "LeakyRelu": _leaky,
        "Reshape": _reshape, "Squeeze": _squeeze, "ExpandDims": _expand_dims,
        "Transpose": _transpose, "ConcatV2": _concat, "Pack": _pack, "Pad": _pad, "PadV2": _pad,
        "Cast": _cast, "Shape": _shape, "StridedSlice": _strided_slice,
        "ResizeBilinear": _resize_bilinear, "FusedBatchNorm": _fused_bn, "FusedBatchNormV3": _fused_bn, "AddN": _add_n,
        "Placeholder": _placeholder,
    }


class GraphPart(nn.Module):
    """A slice of a :class:`TFJSGraph`: feeds node ``start`` with the input, returns ``fetch``.

    Its parameters are only the constants this slice uses (the same Parameter objects as the
    graph's), so ``client.parameters()`` counts the client's weights, not the whole model's.
    """

    def __init__(self, graph: TFJSGraph, start: str, fetch: list[str]) -> None:
        super().__init__()
        object.__setattr__(self, "_graph", graph)  # shared, not a submodule
        self.start = start
        self.fetch = fetch
        used: set[str] = set()
        stack = list(fetch)
        seen: set[str] = set()
        while stack:
            v = stack.pop()
            if v in seen or v == start:
                continue
            seen.add(v)
            for name in (v, v + ":torch"):
                if name in graph._const_key:
                    used.add(graph._const_key[name])
            stack.extend(graph.nodes[v].inputs)
        self.consts = nn.ParameterDict({k: graph.consts[k] for k in sorted(used)})

    @property
    def graph(self) -> TFJSGraph:
        return self._graph

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, ...]:
        outs = self._graph.run({self.start: x}, self.fetch)
        return outs[0] if len(outs) == 1 else tuple(outs)


def load_graph_model(json_path: str | Path, outputs: Iterable[str] | None = None) -> TFJSGraph:
    """Read a TF.js ``graph-model`` (``model.json`` + binary shards beside it) into a
    :class:`TFJSGraph` (float32, eval mode)."""
    p = Path(json_path)
    try:
        model = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise FaceveilDataError(f"{p}: cannot read TF.js model.json ({e})") from e
    if model.get("format") not in (None, "graph-model"):
        raise FaceveilDataError(f"{p}: format {model.get('format')!r} is not a TF.js graph model")
    weights = decode_weights(model["weightsManifest"], lambda name: (p.parent / name).read_bytes())
    return TFJSGraph(model, weights, list(outputs) if outputs else None, source=str(p)).eval()
