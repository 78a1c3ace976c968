"""Per-stimulus and per-subject steps split over processes, through accelerate's process state.

A sharded command (``extract``, ``encode``, ``anchor``, ``selectivity``, ``probe``) runs
unchanged under a launcher that starts N copies of it and sets ``WORLD_SIZE``, ``RANK`` and the
rendezvous variables::

    torchrun --nproc_per_node 4 -m wav2brain extract DATASET --model M --out F
    accelerate launch --multi_gpu --num_processes 4 -m wav2brain extract ...   # one node, 4 GPUs
    torchrun --nnodes 8 --nproc_per_node 1 --node_rank R --master_addr HOST -m wav2brain ...

Each process takes its :func:`shard` of the items (stimuli or subjects), writes the per-item
files the step already writes for resuming (cache entries, ``parts/``, ``partial/``), and the
main process, after every process reached :func:`merge` (a barrier plus an exchange of the
names of the items done), checks that every item was done and writes the shared tables and
summaries: the same files as one process writes. Non-main processes never write a shared file.
Every process must see the same dataset and output folders (one shared file system across
nodes). What is split: stimuli (``extract``, ``selectivity``), subjects and noise-ceiling parts
(``encode``), subjects (``anchor``; the group level runs on the main process), and
(upstream, task) pairs of probe features (``probe``; the downstreams train on the main process).

On a CPU-only machine ``accelerate launch --cpu --num_processes N`` starts one process
(accelerate's CPU launcher needs MPI for more); ``accelerate launch --multi_gpu
--num_processes N`` starts N through torchrun, which shard over CPUs (gloo) here.

Under one process (``WORLD_SIZE`` unset or 1) nothing changes: no process group is created and
accelerate is not imported. With several processes the state is
:class:`accelerate.PartialState` (``cpu=True`` where CUDA is absent: gloo; else NCCL, each process
on its own GPU, so ``--device cuda`` means that process's GPU).
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Hashable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

T = TypeVar("T")

TIMEOUT_S = 24 * 3600.0
"""Longest wait (s) at a barrier: one process may work on its shard for hours while another,
done sooner, waits to merge (torch's default of 30 min would abort a large study)."""


def world_size() -> int:
    """Processes of this run, from ``WORLD_SIZE`` (1 when unset), read without any import.

    Raises
    ------
    ValueError
        When ``WORLD_SIZE`` is not a positive integer.
    """
    text = os.environ.get("WORLD_SIZE", "1").strip() or "1"
    try:
        size = int(text)
    except ValueError:
        size = 0
    if size < 1:
        raise ValueError(f"WORLD_SIZE={text!r}: expected a positive number of processes")
    return size


def is_distributed() -> bool:
    """Whether this process is one of several (``WORLD_SIZE`` > 1)."""
    return world_size() > 1


@functools.cache
def process_state():
    """The :class:`accelerate.PartialState` of this process (created once; sets its device).

    Without CUDA it is the CPU state (``cpu=True``: gloo); accelerate would otherwise treat a
    CPU-only process of a torchrun launch as alone. Barriers wait up to :data:`TIMEOUT_S`.

    Raises
    ------
    ValueError
        When a node runs more processes than it has GPUs (two would share one device).
    """
    from datetime import timedelta

    import torch
    from accelerate import PartialState

    kwargs = {}
    if is_distributed():
        kwargs["timeout"] = timedelta(seconds=TIMEOUT_S)
        per_node = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if gpus and per_node > gpus:
            raise ValueError(
                f"{per_node} processes on this node but {gpus} GPU(s): each process takes its "
                "own GPU; launch at most that many per node, or hide the GPUs "
                "(CUDA_VISIBLE_DEVICES=) to shard over CPU processes"
            )
    return PartialState(cpu=not torch.cuda.is_available(), **kwargs)


def process_index() -> int:
    """Rank of this process (0 is the main process)."""
    return process_state().process_index if is_distributed() else 0


def is_main() -> bool:
    """Whether this process writes the shared files (always under one process)."""
    return process_index() == 0


def wait() -> None:
    """Barrier: return once every process reached it (nothing under one process)."""
    if is_distributed():
        process_state().wait_for_everyone()


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Run the block on the main process first, then on the others.

    For a shared cache one process must fill (the others then read it): no two processes
    write its files at once.
    """
    if not is_main():
        wait()
    yield
    if is_main():
        wait()


def shard(items: Sequence[T]) -> list[T]:
    """This process's contiguous share of ``items`` (all of them under one process).

    Shares are :meth:`accelerate.PartialState.split_between_processes`'s: sizes differ by at
    most one and process ``k`` takes the ``k``-th block, so concatenating the shares in rank
    order gives ``items`` back. A process may get none (fewer items than processes).
    """
    items = list(items)
    if not is_distributed():
        return items
    with process_state().split_between_processes(items) as mine:
        return list(mine)


def gather(value: Any) -> list[Any]:
    """Every process's ``value`` (picklable), in rank order, on every process."""
    if not is_distributed():
        return [value]
    import torch.distributed as dist

    process_state()
    values: list[Any] = [None] * world_size()
    dist.all_gather_object(values, value)
    return values


def merge(done: Mapping[Hashable, T], expected: Sequence[Hashable], what: str) -> dict:
    """Barrier, then every process's results of a sharded step, checked complete, in order.

    Parameters
    ----------
    done : mapping
        This process's results by item (stimulus or subject id); values picklable and small
        (rows of an index, a file name): large results stay in the per-item files.
    expected : sequence
        Every item of the step, in the order one process would have done them.
    what : str
        What an item is, for the error ("stimulus", "subject", ...).

    Returns
    -------
    dict
        Item to result, in the order of ``expected``, on every process.

    Raises
    ------
    ValueError
        Naming every item no process did (a lost shard) and any item done twice, or not asked.
    """
    merged: dict = {}
    twice = []
    for part in gather(dict(done)):
        for item, value in part.items():
            if item in merged:
                twice.append(item)
            merged[item] = value
    missing = [item for item in expected if item not in merged]
    unknown = [item for item in merged if item not in set(expected)]
    if missing or twice or unknown:
        problems = []
        if missing:
            problems.append(f"no process did {what} {_names(missing)}")
        if twice:
            problems.append(f"{what} {_names(twice)} done by two processes")
        if unknown:
            problems.append(f"{what} {_names(unknown)} not in this step")
        raise ValueError(
            f"incomplete merge of {world_size()} process(es): {'; '.join(problems)} "
            "(each must be done by exactly one: the shards lost or repeated items)"
        )
    return {item: merged[item] for item in expected}


def _names(items: Sequence[Hashable]) -> str:
    shown = ", ".join(repr(item) for item in items[:10])
    return shown + (f" and {len(items) - 10} more" if len(items) > 10 else "")


def describe() -> str:
    """``""`` under one process, else ``" [process k/N]"`` (for progress bars and logs)."""
    return f" [process {process_index() + 1}/{world_size()}]" if is_distributed() else ""


def launch_command(argv: Sequence[str], processes: int) -> list[str]:
    """The command line running ``wav2brain *argv`` on ``processes`` local processes.

    One process: ``python -m wav2brain *argv``; more: torchrun's module
    (``python -m torch.distributed.run --standalone --nproc_per_node N -m wav2brain *argv``),
    the launcher this package is tested with. ``--standalone`` rendezvouses on a free local
    port, so two studies (or two tests) launched at once on one machine do not collide on
    torchrun's fixed default port.

    Raises
    ------
    ValueError
        When ``processes`` is not a positive integer.
    """
    if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
        raise ValueError(f"processes must be a positive integer, got {processes!r}")
    if processes == 1:
        return [sys.executable, "-m", "wav2brain", *map(str, argv)]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(processes),
        "-m",
        "wav2brain",
        *map(str, argv),
    ]
