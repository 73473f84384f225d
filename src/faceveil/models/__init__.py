"""Recognisers, attribute models and generators, behind one registry each.

``get_recognizer("dlib")`` returns the pretrained dlib ResNet in PyTorch. Other recognisers
(``faceres``, ``mobilefacenet``) register themselves from their own modules.
"""

from __future__ import annotations

import torch

from faceveil.models.base import CropSpec, OperatingPoint, Recognizer
from faceveil.registry import Registry

#: recognisers and attribute models register themselves from their modules (imported on first use;
#: weights are installed/loaded only when a model is created)
RECOGNIZERS: Registry[Recognizer] = Registry("recognizer", "faceveil.models")
ATTRIBUTE_MODELS: Registry = Registry("attribute model", "faceveil.models")


def get_recognizer(name: str = "dlib", device: str | torch.device | None = None, **kwargs) -> Recognizer:
    """Create a registered recogniser by name (weights are installed/loaded on first use) on ``device``
    (None: the CPU; the bench's training, attacks and judging pass :func:`faceveil.devices.current_device`)."""
    m = RECOGNIZERS.create(name, **kwargs)
    if device is not None:
        from faceveil.devices import resolve_device

        if (dev := resolve_device(device)).type != "cpu":
            m = m.to(dev)
    return m


def deployed_recognizer(device: str | torch.device | None = None) -> Recognizer:
    """The deployed recogniser (:func:`faceveil.config.deployed_recognizer_name`) on ``device`` (None: the CPU)."""
    from faceveil.config import deployed_recognizer_name

    return get_recognizer(deployed_recognizer_name(), device)


def recognizer_names() -> list[str]:
    return RECOGNIZERS.names()


def get_attribute_model(name: str, **kwargs):
    """Create a registered attribute model (``faceapi``, ``faceapi-age-gender``, ``faceapi-expression``,
    ``faceres-attributes``, ``gear``, ``emotion``)."""
    return ATTRIBUTE_MODELS.create(name, **kwargs)


def attribute_model_names() -> list[str]:
    return ATTRIBUTE_MODELS.names()


__all__ = ["ATTRIBUTE_MODELS", "CropSpec", "OperatingPoint", "Recognizer", "RECOGNIZERS", "attribute_model_names", "deployed_recognizer",
           "get_attribute_model", "get_recognizer", "recognizer_names"]
