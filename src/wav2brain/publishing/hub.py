"""Push an export (:func:`wav2brain.publishing.export.export_run`) to the Hugging Face Hub.

The backbone folder (plain ``Wav2Vec2Model``, extractor config, card) goes to ``hub_model_id``;
with ``include_full=True`` the whole brain-encoding model (weights, modeling code with
``auto_map``, card) goes to its own repository, :func:`full_model_repo_id` (a repository holds one
``config.json`` at its root, and ``AutoModel.from_pretrained(repo, trust_remote_code=True)`` reads
it there). Each push is ``create_repo(exist_ok=True)`` then ``upload_folder`` with
:mod:`huggingface_hub`, which honours ``HF_ENDPOINT`` and ``HF_TOKEN``.

A push comes after every local output is written; when the Hub cannot be reached (no network,
offline mode, a refused token), :class:`HubPushError` says so in one message naming the
repository, the endpoint and the local folders that stay in place.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

FULL_MODEL_SUFFIX = "-brain-encoding"
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$|^[A-Za-z0-9][\w.-]*$")


class HubPushError(ConnectionError):
    """The Hub could not take the push; the local export is complete and unchanged."""


def full_model_repo_id(hub_model_id: str) -> str:
    """Repository of the full brain-encoding model next to the backbone's ``hub_model_id``."""
    return hub_model_id + FULL_MODEL_SUFFIX


def is_repo_id(text: str) -> bool:
    """Whether ``text`` has the form of a Hub repository id, ``name`` or ``owner/name``."""
    return isinstance(text, str) and bool(REPO_ID.match(text)) and ".." not in text


def _check_repo_id(hub_model_id: str) -> None:
    if not is_repo_id(hub_model_id):
        raise ValueError(
            f"hub_model_id={hub_model_id!r} is not a Hub repository id: expected 'name' or "
            "'owner/name' (letters, digits, '-', '_', '.')"
        )


def _paths(paths: Mapping[str, Path] | str | os.PathLike) -> Mapping[str, Path]:
    from .export import read_export

    if isinstance(paths, Mapping):
        return paths
    return read_export(paths)


def push_export(
    paths: Mapping[str, Path] | str | os.PathLike,
    hub_model_id: str,
    *,
    token: str | None = None,
    private: bool = False,
    include_full: bool = False,
) -> dict[str, str]:
    """Push an export to the Hub; return repository id -> commit URL.

    Parameters
    ----------
    paths : mapping or path
        What :func:`~wav2brain.publishing.export.export_run` returned, or its ``out_dir``.
    hub_model_id : str
        Repository of the backbone (``owner/name``); created if missing.
    token : str, optional
        Hub token; default the one huggingface_hub finds (``HF_TOKEN``, the login cache).
    private : bool
        Create the repositories as private (an existing repository keeps its visibility).
    include_full : bool
        Also push the full brain-encoding model (``model/``) to :func:`full_model_repo_id`, and an
        unmerged export's ``adapter/`` into its ``adapter`` folder.

    Raises
    ------
    ValueError
        For a malformed ``hub_model_id``.
    FileNotFoundError
        When a folder to push is missing (checked before any request).
    HubPushError
        When the Hub cannot be reached or refuses the push.
    """
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    _check_repo_id(hub_model_id)
    paths = _paths(paths)
    pushes = [(hub_model_id, paths.get("backbone"), "backbone", "")]
    if include_full:
        full = full_model_repo_id(hub_model_id)
        pushes.append((full, paths.get("model"), "full model", ""))
        if "adapter" in paths:
            pushes.append((full, paths["adapter"], "LoRA adapter", "adapter"))
    for repo_id, folder, what, _ in pushes:
        if (
            folder is None
            or not Path(folder).is_dir()
            or not (Path(folder) / "README.md").is_file()
        ):
            raise FileNotFoundError(
                f"the {what} export to push to {repo_id} is missing ({folder}): run export_run first"
            )
    _name_cards(paths, hub_model_id, pushes)
    api = HfApi(token=token)
    commits: dict[str, str] = {}
    for repo_id, folder, what, path_in_repo in pushes:
        try:
            api.create_repo(repo_id, private=private, exist_ok=True)
            info = api.upload_folder(
                repo_id=repo_id,
                folder_path=str(folder),
                path_in_repo=path_in_repo or None,
                commit_message=f"Upload refined wav2vec 2.0 {what} (wav2brain)",
            )
        except (OSError, OfflineModeIsEnabled, HfHubHTTPError, *_http_errors()) as error:
            local = ", ".join(str(p) for k, p in paths.items() if k != "manifest")
            pushed = f" (already pushed: {', '.join(commits)})" if commits else ""
            raise HubPushError(
                f"could not push the {what} to {repo_id} at {constants.ENDPOINT}: "
                f"{error_line(error)}. The export is complete on disk ({local}){pushed}; push it "
                f"later with push_export('{Path(folder).parent}', '{hub_model_id}')"
            ) from None
        commits[repo_id] = str(info.commit_url)
    return commits


def _name_cards(paths: Mapping[str, Path], hub_model_id: str, pushes) -> None:
    """Make the cards name the repositories they are pushed to, or refuse a mismatch.

    An export made without ``hub_model_id`` has cards showing a placeholder in their usage
    examples; it is replaced by the repository id (the README is rewritten atomically, so the
    local export matches the pushed one). Cards made for another id are refused.
    """
    import json

    from wav2brain.atomic import write_text_atomic

    from .card import PLACEHOLDER_REPO

    manifest = paths.get("manifest")
    if manifest is not None and Path(manifest).is_file():
        recorded = json.loads(Path(manifest).read_text(encoding="utf-8")).get("hub_model_id")
        if recorded not in (None, hub_model_id):
            raise ValueError(
                f"the export's cards were written for {recorded!r}, not {hub_model_id!r}: push to "
                f"{recorded!r}, or export again with card['hub_model_id']={hub_model_id!r}"
            )
    for repo_id, folder, *_ in pushes:
        readme = Path(folder) / "README.md"
        text = readme.read_text(encoding="utf-8")
        if PLACEHOLDER_REPO in text:
            write_text_atomic(text.replace(PLACEHOLDER_REPO, repo_id), readme)


def _http_errors() -> tuple[type[BaseException], ...]:
    """Transport errors of the HTTP client huggingface_hub uses (``httpx2`` in 2.x, ``httpx`` in 1.x)."""
    import importlib

    errors = []
    for name in ("httpx2", "httpx"):
        try:
            errors.append(importlib.import_module(name).TransportError)
        except ImportError:
            continue
    return tuple(errors)


def error_line(error: BaseException) -> str:
    """``Type: first line of the message`` of an exception (library messages run to several)."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return f"{type(error).__name__}: {text}"
