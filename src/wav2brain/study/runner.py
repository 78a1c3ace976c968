"""Run a study: every step as its public subcommand, recorded in ``RUN/study.json``, resumable.

``RUN/study.json`` (interface A of issue 12) is rewritten atomically after every step::

    {"format": 1, "name": ..., "simulated": bool, "config": {...the resolved study config...},
     "planned": [STEP_ID, ...],
     "steps": {STEP_ID: {"step", "command", "out", "digest", "seconds", "finished"}},
     "started": {STEP_ID: digest}}

``started`` holds the digest of a step when it began, so that an interrupted step is told apart
from a changed one; a step's ``steps`` entry is removed when it starts and written when it ends,
so a step interrupted after it began replacing its output is never taken as done. On a re-run a
step is skipped when its digest (:func:`plan_study`) equals the recorded one and its output
exists; a changed step runs again, and so does every step that depends on it (their digests
contain its digest). A step listed in ``steps`` whose inputs come
from a step that neither runs now nor ran before is refused before anything runs, naming that
step. At the end ``RUN/summary.json`` lists what each step wrote.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from wav2brain.atomic import write_text_atomic
from wav2brain.study.config import StudyConfig
from wav2brain.study.steps import FRESH_ON_CHANGE, STEP_ORDER, Step, plan_study, study_steps

logger = logging.getLogger(__name__)

STUDY_FILE = "study.json"
SUMMARY_FILE = "summary.json"
LOCK_FILE = ".study.lock"
FORMAT = 1


@dataclass(frozen=True)
class StudyResult:
    """What :func:`run_study` did.

    Attributes
    ----------
    run_dir : Path
    ran, skipped : list of str
        Step ids run now, and those skipped as unchanged.
    summary : dict
        The content of ``RUN/summary.json`` (empty for a dry run).
    ground_truth : dict or None
        ``RUN/truth/truth.json`` when the study's ``check_simulated`` step has run (SIMULATED
        checks; its ``"passed"`` is the verdict), else None.
    """

    run_dir: Path
    ran: list[str]
    skipped: list[str]
    summary: dict[str, Any]
    ground_truth: dict[str, Any] | None = None

    @property
    def failed_checks(self) -> list[str]:
        """Names of the required ground-truth checks that failed (empty when none ran)."""
        rows = (self.ground_truth or {}).get("checks", [])
        return [row["name"] for row in rows if row.get("required", True) and not row["passed"]]


def read_record(run_dir: str | Path) -> dict[str, Any] | None:
    """The ``study.json`` of a run folder, or None when it has none."""
    path = Path(run_dir) / STUDY_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}): not a study run folder?") from None


def run_study(
    config: StudyConfig,
    *,
    only: Sequence[str] | None = None,
    dry_run: bool = False,
    echo=print,
    extra: dict[str, Any] | None = None,
) -> StudyResult:
    """Run (or resume) the steps of a study.

    Parameters
    ----------
    config : StudyConfig
        The study (:meth:`StudyConfig.from_yaml`).
    only : sequence of str, optional
        Run only these steps (ids of :data:`~wav2brain.study.steps.STEP_ORDER`, among the
        study's); the others' outputs must exist from an earlier run where these read them.
    dry_run : bool
        Print each command (and whether it would run or be skipped); run and write nothing.
    echo : callable
        Where the step lines and the final summary are printed.
    extra : dict, optional
        More top-level entries of study.json (the demo's ``"demo"`` identity).

    Raises
    ------
    ValueError
        Before any step: a run folder of another study (its ``name``), an unknown step in
        ``only`` or one the study does not run, a step whose
        inputs no step makes (naming the step that makes them), a command's options that its
        parser refuses.
    RuntimeError
        Another process is running the same folder (:func:`run_lock`); a step's command failed
        (its exit status and command line).
    """
    by_id = {step.id: step for step in plan_study(config, applicable=True)}
    steps = [by_id[step_id] for step_id in study_steps(config)]
    run_dir = Path(config.out).absolute()
    chosen = _chosen(steps, only)
    for step in chosen:
        _check_parses(step)
    record = _checked_record(config, chosen, by_id, run_dir)
    if dry_run:
        return _run_steps(config, steps, chosen, record, run_dir, True, echo, extra)
    run_dir.mkdir(parents=True, exist_ok=True)
    with run_lock(run_dir):  # checked again as the run that held the lock may have left it
        record = _checked_record(config, chosen, by_id, run_dir)
        return _run_steps(config, steps, chosen, record, run_dir, False, echo, extra)


def _checked_record(config: StudyConfig, chosen, by_id, run_dir: Path) -> dict[str, Any]:
    """The run folder's record (a new one for a new folder), refused when it is another
    study's or when a chosen step's inputs are not there (:func:`_check_inputs`)."""
    record = read_record(run_dir) or _new_record(config)
    if record["name"] != config.name:
        raise ValueError(
            f"{run_dir} holds the runs of study {record['name']!r} ({STUDY_FILE}), not of "
            f"{config.name!r}: give this study another out, or remove that folder"
        )
    for step in chosen:
        _check_inputs(step, chosen, by_id, record["steps"], run_dir)
    return record


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold ``RUN/.study.lock`` for a run: a second run of the same folder is refused at once.

    An advisory ``flock`` on POSIX (released by the system when a process dies, so a killed run
    leaves no stale lock); elsewhere no lock is taken.

    Raises
    ------
    RuntimeError
        Another process holds the folder's lock (naming its process id).
    """
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    path = run_dir / LOCK_FILE
    with open(path, "a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise RuntimeError(
                f"{run_dir} is being run by another process (pid {holder}): wait for it to end, "
                "or give this run another out"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run_steps(config, steps, chosen, record, run_dir, dry_run, echo, extra) -> StudyResult:
    """The steps of :func:`run_study`, after its checks (under the run's lock unless a dry run)."""
    done = record["steps"]
    ran, skipped = [], []
    if not dry_run:
        record.update(_new_record(config), steps=done, started=record.get("started", {}))
        record.update(extra or {}, planned=[step.id for step in steps])
        _write(record, run_dir)
    for step in chosen:
        unchanged = step.id in done and done[step.id]["digest"] == step.digest
        if unchanged and step.out.exists():
            skipped.append(step.id)
            echo(f"[{step.id}] unchanged, skipped ({_shell(step.argv)})")
            continue
        if dry_run:
            echo(f"[{step.id}] would run: {_shell(launch_argv(step, config.processes))}")
            ran.append(step.id)
            continue
        _clear_stale(step, record, run_dir)
        done.pop(step.id, None)  # its output is being replaced: an interrupted run is not done
        record["started"][step.id] = step.digest
        _write(record, run_dir)
        echo(f"[{step.id}] running: {_shell(launch_argv(step, config.processes))}")
        seconds = _execute(step, config.processes)
        done[step.id] = {
            "step": step.id.split(":")[0],
            "command": ["wav2brain", *step.argv],
            "out": _relative(step.out, run_dir),
            "digest": step.digest,
            "seconds": round(seconds, 2),
            "finished": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        record["started"].pop(step.id, None)
        _write(record, run_dir)
        echo(f"[{step.id}] done in {seconds:.1f} s")
        ran.append(step.id)
    summary: dict[str, Any] = {}
    if not dry_run:
        summary = _summary(steps, done, run_dir)
        write_text_atomic(json.dumps(summary, indent=2), run_dir / SUMMARY_FILE)
        echo(f"study {config.name!r} in {run_dir}: {len(ran)} steps run, {len(skipped)} unchanged")
        for item in summary["written"]:
            echo(f"  {item['step']:<17} {item['seconds']:>8.1f} s  {run_dir / item['out']}")
        echo(f"  summary: {run_dir / SUMMARY_FILE}")
    truth = _truth_file(done, run_dir)
    ground_truth = json.loads(truth.read_text()) if truth is not None else None
    result = StudyResult(run_dir, ran, skipped, summary, ground_truth)
    if ground_truth is not None:
        verdict = (
            "passed" if not result.failed_checks else "FAILED: " + ", ".join(result.failed_checks)
        )
        echo(f"  SIMULATED ground-truth checks {verdict} ({truth})")
    return result


def _truth_file(done: dict[str, Any], run_dir: Path) -> Path | None:
    """The check_simulated step's truth.json, when that step has run and written it."""
    from wav2brain.reports.ground_truth import TRUTH_FILE

    if "check_simulated" not in done:
        return None
    path = run_dir / done["check_simulated"]["out"] / TRUTH_FILE
    return path if path.is_file() else None


def launch_argv(step: Step, processes: int) -> list[str]:
    """The command line a step runs as (``wav2brain ...``, or a distributed launch when sharded)."""
    from wav2brain.distributed import launch_command

    if step.sharded and processes > 1:
        return launch_command(step.argv, processes)
    return ["wav2brain", *step.argv]


def _execute(step: Step, processes: int) -> float:
    """Run one step; return its wall-clock seconds."""
    from wav2brain.cli import INTERRUPTED, main

    start = time.perf_counter()
    if step.sharded and processes > 1:
        status = subprocess.run(launch_argv(step, processes), check=False).returncode
    else:
        status = main(step.argv)
    if status in (INTERRUPTED, -2):  # the step was stopped by Ctrl-C (-2: SIGINT, launched)
        raise KeyboardInterrupt
    if status:
        raise RuntimeError(
            f"step {step.id} failed (exit status {status}): {_shell(['wav2brain', *step.argv])}"
        )
    return time.perf_counter() - start


def _chosen(steps: list[Step], only: Sequence[str] | None) -> list[Step]:
    if only is None:
        return steps
    ids = [step.id for step in steps]
    for name in only:
        if name not in STEP_ORDER:
            raise ValueError(f"--steps: unknown step {name!r} (steps: {', '.join(STEP_ORDER)})")
        if name not in ids:
            raise ValueError(
                f"--steps: {name!r} is not a step of this study (its steps: {', '.join(ids)})"
            )
    return [step for step in steps if step.id in set(only)]


def _check_inputs(step: Step, chosen: list[Step], by_id, done, run_dir: Path) -> None:
    """Refuse a step whose input step neither runs before it now nor ran, as planned, before."""
    earlier = {s.id for s in chosen[: chosen.index(step)]}
    for need in step.depends:
        if need in earlier:
            continue
        producer = by_id[need]
        where = _relative(producer.out, run_dir)
        if need not in done or not (run_dir / done[need]["out"]).exists():
            raise ValueError(
                f"step {step.id} reads the output ({where}) of step {need}, which has not run in "
                f"{run_dir}: run {need} first (add it to --steps)"
            )
        if done[need]["digest"] != producer.digest:
            raise ValueError(
                f"step {step.id} reads the output ({where}) of step {need}, whose command or "
                f"inputs changed since it ran: run {need} again first (add it to --steps)"
            )


def _check_parses(step: Step) -> None:
    """Parse a step's argv with its command's own parser, so bad options fail before any work."""
    import contextlib
    import io

    from wav2brain.cli import SUBCOMMAND_MODULES, build_parser

    if step.argv[0] not in SUBCOMMAND_MODULES:
        raise ValueError(
            f"step {step.id}: wav2brain {step.argv[0]} is not a command of this installation "
            f"(commands: {', '.join(SUBCOMMAND_MODULES)}); leave the step out"
        )
    if step.argv[0] == "train":
        from wav2brain.training.arguments import parse_recipe_args

        try:
            parse_recipe_args(["--config", *step.argv[1:]])
        except (SystemExit, ValueError) as error:
            raise ValueError(f"step {step.id}: {error} (command: {_shell(step.argv)})") from None
        return
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            build_parser().parse_args(step.argv)
    except SystemExit:
        message = stderr.getvalue().strip().splitlines()[-1:] or ["(no message)"]
        raise ValueError(f"step {step.id}: {message[0]} (command: {_shell(step.argv)})") from None


def _clear_stale(step: Step, record: dict[str, Any], run_dir: Path) -> None:
    """Remove the output of a changed simulation/training/task step (never outside the run)."""
    if step.id not in FRESH_ON_CHANGE or not step.out.exists():
        return
    if record["started"].get(step.id) == step.digest:
        return  # interrupted with the same options: the command resumes it
    if run_dir not in step.out.absolute().parents:
        return
    logger.info("%s changed: removing its earlier output %s", step.id, step.out)
    shutil.rmtree(step.out) if step.out.is_dir() else step.out.unlink()


def _summary(steps: list[Step], done: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    written = []
    for step in steps:
        if step.id not in done:
            continue
        paths = []
        for target in step.writes:
            if target.is_dir():
                paths.append(_relative(target, run_dir))
                paths += sorted(_relative(p, run_dir) for p in target.iterdir())
            elif target.exists():
                paths.append(_relative(target, run_dir))
        written.append(
            {
                "step": step.id,
                "out": done[step.id]["out"],
                "seconds": done[step.id]["seconds"],
                "paths": paths,
            }
        )
    return {"run": str(run_dir), "written": written}


def _new_record(config: StudyConfig) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "name": config.name,
        "simulated": config.data.ground_truth(Path(config.out).absolute()) is not None,
        "config": config.to_dict(),
        "steps": {},
        "started": {},
    }


def _write(record: dict[str, Any], run_dir: Path) -> None:
    write_text_atomic(json.dumps(record, indent=2), run_dir / STUDY_FILE)


def _relative(path: Path, run_dir: Path) -> str:
    try:
        return str(Path(path).absolute().relative_to(run_dir))
    except ValueError:
        return str(path)


def _shell(argv: Sequence[str]) -> str:
    return " ".join(shlex.quote(str(a)) for a in argv)
