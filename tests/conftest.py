"""Shared fixtures: tiny model configs and the real dataset layouts in ``tests/data``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# No test may reach the Hugging Face Hub: datasets and transformers stay offline for the whole run.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

TEST_DATA = Path(__file__).resolve().parent / "data"


def tiny_wav2vec2_kwargs() -> dict:
    """Keyword arguments of a tiny wav2vec2 config (hidden size 32, 2 layers, real 50 Hz front end)."""
    from wav2brain.simulation import tiny_model_kwargs

    return tiny_model_kwargs()


@pytest.fixture
def tiny_kwargs() -> dict:
    """A fresh copy of :func:`tiny_wav2vec2_kwargs` for each test."""
    return tiny_wav2vec2_kwargs()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A saved tiny ``Wav2Vec2Model`` (seeded), as ``wav2brain extract --model`` takes it."""
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model")
    Wav2Vec2Model(Wav2Vec2Config(**tiny_wav2vec2_kwargs())).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def real_layouts() -> Path:
    """The real OpenNeuro metadata (``ds002345``, ``ds003020``) kept in ``tests/data``.

    The folder travels with the repository (metadata only, CC0; see ``tests/data/README.md``), so
    the suite needs nothing outside the clone.
    """
    return TEST_DATA


@pytest.fixture(autouse=True, scope="session")
def single_thread():
    """One BLAS/torch thread per test process: ``make test`` runs two processes on two cores, and
    multithreaded LAPACK (eigh, svd) stalls badly when cores are oversubscribed."""
    import torch
    from threadpoolctl import threadpool_limits

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1):
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def narratives(real_layouts: Path, tmp_path_factory) -> Path:
    """A copy of the real Narratives (ds002345) layout with fabricated stand-in binaries."""
    from fabricate import fabricate_layout

    return fabricate_layout(real_layouts / "ds002345", tmp_path_factory.mktemp("n") / "ds002345")


@pytest.fixture(scope="module")
def lebel(real_layouts: Path, tmp_path_factory) -> Path:
    """A copy of the real LeBel (ds003020) layout with fabricated stand-in binaries."""
    from fabricate import fabricate_layout

    return fabricate_layout(real_layouts / "ds003020", tmp_path_factory.mktemp("l") / "ds003020")
