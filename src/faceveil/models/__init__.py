"""Recognisers, attribute models and generators, behind one registry each.

``get_recognizer("dlib")`` returns the pretrained dlib ResNet in PyTorch. Other recognisers
(``faceres``, ``mobilefacenet``) register themselves from their own modules.
"""

from __future__ import annotations

import importlib

from faceveil.models.base import CropSpec, OperatingPoint, Recognizer
from faceveil.registry import Registry

RECOGNIZERS: Registry[Recognizer] = Registry("recognizer")

# modules that register recognisers; imported lazily so a missing optional model never breaks
# `import faceveil`
_RECOGNIZER_MODULES = ["faceveil.models.dlib_resnet", "faceveil.models.human"]


def _load_all() -> None:
    for mod in _RECOGNIZER_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise


def get_recognizer(name: str = "dlib", **kwargs) -> Recognizer:
    """Create a registered recogniser by name (weights are installed/loaded on first use)."""
    _load_all()
    return RECOGNIZERS.create(name, **kwargs)


def recognizer_names() -> list[str]:
    _load_all()
    return RECOGNIZERS.names()


__all__ = ["CropSpec", "OperatingPoint", "Recognizer", "RECOGNIZERS", "get_recognizer", "recognizer_names"]
