"""Register the brain-encoding classes with ``AutoConfig`` / ``AutoModel`` without importing them.

``import wav2brain`` must leave ``AutoConfig.for_model("wav2vec2-brain-encoding")`` and
``AutoModel.from_pretrained(saved folder)`` working, yet the command line must start in well under
2 s, while importing the model classes costs torch and transformers (5–9 s here). So
``import wav2brain`` only installs :class:`RegistrationFinder`, a ``sys.meta_path`` finder that
imports nothing. The registrations then happen when they can first be needed:

- ``AutoConfig.register`` once ``transformers.models.auto.configuration_auto`` is imported (the
  module of ``AutoConfig`` and ``CONFIG_MAPPING``, imported by any use of them);
- ``AutoModel.register`` once ``transformers.models.auto.modeling_auto`` is imported (the module
  of ``AutoModel``).

A registration imports :mod:`wav2brain.modeling`, which imports transformers modules in turn, so
it must not run while one of them is half-imported: ``from transformers import Wav2Vec2Model``
imports ``modeling_auto`` from inside ``modeling_wav2vec2``, whose classes do not exist yet at
that moment. The finder therefore watches every import of ``transformers`` and
``wav2brain.modeling`` modules while a registration is pending, and registers after one of them
finishes only when none of them is still being imported. Once both classes are registered the
finder removes itself. If transformers' auto modules are already imported when ``wav2brain`` is,
the classes are registered at once. Registering is idempotent (``exist_ok=True``), and
:func:`register_auto_classes` does it explicitly.
"""

from __future__ import annotations

import importlib.abc
import sys
import threading
from typing import Any

CONFIG_AUTO_MODULE = "transformers.models.auto.configuration_auto"
MODEL_AUTO_MODULE = "transformers.models.auto.modeling_auto"
WATCHED_PACKAGES = ("transformers", "wav2brain.modeling")
"""Packages whose modules must all be fully imported before a registration runs."""

_lock = threading.RLock()
_loading: set[str] = set()
_done = {"config": False, "model": False}
_registering = False


def register_config() -> None:
    """Register :class:`Wav2Vec2BrainEncodingConfig` with ``AutoConfig`` (idempotent)."""
    from transformers import AutoConfig

    from wav2brain.modeling.configuration_brain_encoding import Wav2Vec2BrainEncodingConfig

    AutoConfig.register(
        Wav2Vec2BrainEncodingConfig.model_type, Wav2Vec2BrainEncodingConfig, exist_ok=True
    )
    _done["config"] = True


def register_model() -> None:
    """Register :class:`Wav2Vec2ForBrainEncoding` with ``AutoModel`` (idempotent)."""
    from transformers import AutoModel

    from wav2brain.modeling.configuration_brain_encoding import Wav2Vec2BrainEncodingConfig
    from wav2brain.modeling.modeling_brain_encoding import Wav2Vec2ForBrainEncoding

    AutoModel.register(Wav2Vec2BrainEncodingConfig, Wav2Vec2ForBrainEncoding, exist_ok=True)
    _done["model"] = True


def register_auto_classes() -> None:
    """Register both classes now (imports torch and transformers)."""
    register_config()
    register_model()
    _uninstall_if_done()


def _watched(name: str) -> bool:
    return any(name == package or name.startswith(package + ".") for package in WATCHED_PACKAGES)


def attempt_registration() -> None:
    """Register what transformers' imported auto modules need, unless an import is under way.

    The lock guards only the bookkeeping, never the imports a registration makes: holding it
    while importing could deadlock with another thread that is importing a watched module.
    Modules imported during a registration (by this or another thread) are picked up by the loop.
    """
    global _registering
    with _lock:
        if _registering or _loading:
            return
        _registering = True
    try:
        progressed = True
        while progressed:
            progressed = False
            if not _done["config"] and CONFIG_AUTO_MODULE in sys.modules:
                register_config()
                progressed = True
            if not _done["model"] and MODEL_AUTO_MODULE in sys.modules:
                register_model()
                progressed = True
    finally:
        with _lock:
            _registering = False
    _uninstall_if_done()


def _uninstall_if_done() -> None:
    if all(_done.values()):
        sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, RegistrationFinder)]


class _NotifyingLoader(importlib.abc.Loader):
    """Wraps a module's loader: marks the module as being imported, then attempts registration."""

    def __init__(self, loader: Any, name: str) -> None:
        self._loader = loader
        self._name = name

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        with _lock:
            _loading.add(self._name)
        try:
            self._loader.exec_module(module)
        finally:
            with _lock:
                _loading.discard(self._name)
        attempt_registration()

    def __getattr__(self, name: str) -> Any:  # get_source, get_resource_reader, is_package, ...
        return getattr(self._loader, name)


class RegistrationFinder(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps the loader of watched modules found by the other finders."""

    def find_spec(self, fullname: str, path=None, target=None):
        if not _watched(fullname):
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _NotifyingLoader(spec.loader, fullname)
        return spec


def install() -> None:
    """Put :class:`RegistrationFinder` first on ``sys.meta_path`` (once) and register what can be."""
    with _lock:
        if not all(_done.values()) and not any(
            isinstance(f, RegistrationFinder) for f in sys.meta_path
        ):
            sys.meta_path.insert(0, RegistrationFinder())
    attempt_registration()
