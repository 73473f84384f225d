"""Protected face-recognition systems you can build, save, load and run (enrol, verify, identify).

``faceveil.system`` needs no dataset and no training code: build a system offline with
:func:`faceveil.bench.build.build_system` (or ``faceveil system build``), save it, then load it anywhere::

    from faceveil.system import load_system
    system = load_system("fo.fvsys")
    templates = system.enroll("alice.jpg")              # protected templates: what a database stores
    system.verify("probe.jpg", templates)[0].accepted   # decision, distance, threshold
"""

from faceveil.system.bundle import BundleError, bundle_info
from faceveil.system.core import (
    Decision,
    Gallery,
    Match,
    Payload,
    ProtectedSystem,
    SystemClient,
    SystemNotReadyError,
    SystemServer,
)
from faceveil.system.inputs import FaceInfo, to_chips
from faceveil.system.load import load_client, load_system

__all__ = ["BundleError", "Decision", "FaceInfo", "Gallery", "Match", "Payload", "ProtectedSystem", "SystemClient",
           "SystemNotReadyError", "SystemServer", "bundle_info", "load_client", "load_system", "to_chips"]
