"""Discovery on bad input and on layouts it was not written against (issue 7).

Every bad input gets a test: TRs in milliseconds or disagreeing between table and sidecar,
zero-padded labels, multi-echo files, misnamed alignments, runs of one WAV that disagree about
where the story starts, exclusion lists, LeBel's repeated story. pybids is the oracle for
entities and inherited metadata (``benchmarks/bench_discovery.py`` says why it is not the engine).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import soundfile as sf

from test_data_bids import clone, rewrite
from test_prepare import RAW, load_script, make_bids
from wav2brain.data.bids import (
    check_story_positions,
    discover_runs,
    find_alignment,
    read_mapping_table,
    read_sidecar,
)
from wav2brain.data.exclusions import read_exclusions
from wav2brain.data.prepare import prepare_dataset

SCAN_EXCLUDE = (
    Path(__file__).resolve().parents[1] / "dataset_scripts/data/narratives_scan_exclude.json"
)
SOULS = "sub-UTS01/ses-2/func/sub-UTS01_ses-2_task-souls_bold.nii.gz"


def souls_table(root: Path, tmp_path: Path, tr: str, extra: str = "") -> Path:
    """A one-row mapping table for LeBel's souls run with the given ``tr`` cell."""
    table = tmp_path / "map.tsv"
    header = "subject\ttask\trun\tbold\tstimulus\tonset\ttr" + ("\techo" if extra else "")
    row = f"UTS01\tsouls\t\t{SOULS}\tsouls.wav\t10\t{tr}" + (f"\t{extra}" if extra else "")
    table.write_text(f"{header}\n{row}\n")
    return table


# --- TR sources -------------------------------------------------------------------------------


def test_table_tr_in_milliseconds_is_refused_naming_table_and_row(lebel, tmp_path):
    with pytest.raises(
        ValueError,
        match=r"map.tsv, row 1 \(line 2\).*TR 2000.0 from mapping table map.tsv row 1 .*milliseconds",
    ) as info:
        read_mapping_table(souls_table(lebel, tmp_path, "2000"), root=lebel)
    assert "sidecar sub-UTS01_ses-2_task-souls_bold.json: 2.0" in str(info.value)


def test_table_and_sidecar_disagreeing_is_refused_naming_both(lebel, tmp_path):
    with pytest.raises(ValueError, match=r"disagree by more than 1%") as info:
        read_mapping_table(souls_table(lebel, tmp_path, "2.5"), root=lebel)
    message = str(info.value)
    assert "mapping table map.tsv row 1: 2.5" in message
    assert "sidecar sub-UTS01_ses-2_task-souls_bold.json: 2.0" in message
    # Negative control: within 1 % both are recorded and the table's value is used.
    (run,) = read_mapping_table(souls_table(lebel, tmp_path, "2.01"), root=lebel)
    assert run.tr == 2.01
    assert run.tr_sources == (
        ("mapping table map.tsv row 1", 2.01),
        ("sidecar sub-UTS01_ses-2_task-souls_bold.json", 2.0),
    )


def test_sidecar_tr_in_milliseconds_is_refused_naming_the_sidecar(narratives, tmp_path):
    root = clone(narratives, tmp_path)
    sidecar = root / "sub-001/func/sub-001_task-tunnel_bold.json"
    meta = json.loads(sidecar.read_text())
    rewrite(sidecar, json.dumps({**meta, "RepetitionTime": 1500}))
    with pytest.raises(
        ValueError,
        match=r"sub-001_task-tunnel_bold.nii.gz: TR 1500.0 from sidecar sub-001_task-tunnel_bold.json",
    ):
        discover_runs(root, tasks="tunnel")
    rewrite(sidecar, json.dumps({**meta, "RepetitionTime": "fast"}))
    with pytest.raises(ValueError, match="RepetitionTime 'fast' is not a number"):
        discover_runs(root, tasks="tunnel")


def test_events_runs_record_their_tr_source_and_slice_time_reference(narratives, tmp_path):
    (run,) = discover_runs(narratives, tasks="tunnel")
    assert run.tr_sources == (("sidecar sub-001_task-tunnel_bold.json", 1.5),)
    assert run.origin.startswith("events file ") and run.origin.endswith(
        "sub-001_task-tunnel_events.tsv"
    )
    assert (run.slice_time_reference, run.slice_time_source) == (
        0.0,
        "acquisition start (no slice-timing correction)",
    )
    root = clone(narratives, tmp_path)
    sidecar = root / "sub-001/func/sub-001_task-tunnel_bold.json"
    meta = json.loads(sidecar.read_text())
    rewrite(sidecar, json.dumps({**meta, "SliceTimingCorrected": True, "StartTime": 0.75}))
    (run,) = discover_runs(root, tasks="tunnel")
    assert run.slice_time_reference == 0.75 and "corrected" in run.slice_time_source
    rewrite(sidecar, json.dumps({**meta, "SliceTimingCorrected": True, "StartTime": 3.0}))
    with pytest.raises(
        ValueError, match=r"sub-001_task-tunnel_bold.nii.gz: .*3.0 s must lie in \[0, TR=1.5\)"
    ):
        discover_runs(root, tasks="tunnel")


# --- labels, echoes, duplicates ---------------------------------------------------------------


def write_image(path: Path, n_volumes: int, tr: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(np.ones((2, 2, 2, n_volumes), np.float32), np.eye(4))
    img.header.set_zooms((1.0, 1.0, 1.0, tr))
    img.to_filename(str(path))
    return path


def made_up_layout(root: Path) -> Path:
    """A BIDS layout the loader was not written against (BIDS 1.8 features).

    Sessions; ``acq-`` and zero-padded ``run-07``; a multi-echo acquisition (``echo-1``/``echo-2``)
    beside a single-echo one; only top-level task sidecars (``task-listen_bold.json``) with a
    more specific ``acq-mb`` one; top-level events whose rows are ``silence`` and ``speech`` (not
    ``story``); a stimulus ``book_section-1.wav`` whose TextGrid is ``book_section1.TextGrid``.
    """
    (root / "stimuli").mkdir(parents=True)
    sf.write(root / "stimuli" / "book_section-1.wav", np.zeros(8000, np.float32), 1000)
    (root / "derivatives" / "TextGrids").mkdir(parents=True)
    (root / "derivatives" / "TextGrids" / "book_section1.TextGrid").write_text("stub")
    (root / "dataset_description.json").write_text('{"Name": "made up", "BIDSVersion": "1.8.0"}')
    (root / "task-listen_bold.json").write_text(
        json.dumps({"RepetitionTime": 2.0, "TaskName": "listen"})
    )
    (root / "task-listen_acq-mb_bold.json").write_text(
        json.dumps({"MultibandAccelerationFactor": 4, "EchoTime": 0.03})
    )
    (root / "task-listen_events.tsv").write_text(
        "onset\tduration\ttrial_type\tstim_file\n0.0\t2.0\tsilence\tn/a\n2.0\t8.0\tspeech\tbook_section-1.wav\n"
    )
    func = root / "sub-01" / "ses-A" / "func"
    for name in (
        "sub-01_ses-A_task-listen_acq-mb_run-07_echo-1_bold.nii.gz",
        "sub-01_ses-A_task-listen_acq-mb_run-07_echo-2_bold.nii.gz",
        "sub-01_ses-A_task-listen_acq-sb_run-07_bold.nii.gz",
        "sub-01_ses-B_task-listen_acq-sb_run-01_bold.nii.gz",
    ):
        folder = func if "ses-A" in name else root / "sub-01" / "ses-B" / "func"
        write_image(folder / name, 6, 2.0)
    (func / "sub-01_ses-A_task-listen_acq-mb_run-07_echo-2_bold.json").write_text(
        json.dumps({"EchoTime": 0.05})
    )
    return root


def test_made_up_layout_sessions_acq_echo_top_level_sidecars_and_other_trial_types(tmp_path):
    root = made_up_layout(tmp_path / "bids")
    with pytest.raises(
        ValueError,
        match=r"multi-echo run \(2 echoes: \['1', '2'\]\).*echo-1_bold.nii.gz.*echo-2_bold.nii.gz.*--echo N",
    ):
        discover_runs(root, trial_type="speech")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an alignment is found: no warning
        runs = discover_runs(root, trial_type="speech", echo="2", sessions=["A"], runs=["7"])
    assert [r.key for r in runs] == [
        "sub-01_ses-A_task-listen_acq-mb_run-07",
        "sub-01_ses-A_task-listen_acq-sb_run-07",
    ]
    mb, sb = runs
    assert (mb.echo, mb.acquisition, mb.run, mb.session, sb.echo) == ("2", "mb", "07", "A", None)
    assert mb.tr == 2.0 and mb.tr_sources == (("sidecar task-listen_bold.json", 2.0),)
    assert (mb.onset, mb.story_offset, mb.duration) == (
        2.0,
        0.0,
        8.0,
    )  # the 'silence' row names no WAV
    assert mb.alignment_path == root / "derivatives" / "TextGrids" / "book_section1.TextGrid"
    assert read_sidecar(mb.bold_path, root) == {
        "RepetitionTime": 2.0,
        "TaskName": "listen",
        "MultibandAccelerationFactor": 4,
        "EchoTime": 0.05,
    }
    # 7, 07 and run-7 are one BIDS run index; 1 matches the zero-padded session-B run-01.
    assert [
        r.key for r in discover_runs(root, trial_type="speech", echo=1, runs=["run-007", "1"])
    ] == [
        "sub-01_ses-A_task-listen_acq-mb_run-07",
        "sub-01_ses-A_task-listen_acq-sb_run-07",
        "sub-01_ses-B_task-listen_acq-sb_run-01",
    ]
    with pytest.raises(
        ValueError, match=r"runs \['8'\] match no run; labels found: \['01', '07'\]"
    ):
        discover_runs(root, trial_type="speech", echo=1, runs=["8"])
    with pytest.raises(ValueError, match=r"sessions \['C'\] match no run"):
        discover_runs(root, trial_type="speech", echo=1, sessions=["C"])


def test_pybids_oracle_agrees_on_entities_and_inherited_metadata(tmp_path, narratives, lebel):
    bids = pytest.importorskip("bids")
    root = made_up_layout(tmp_path / "bids")
    cases = [
        (root, discover_runs(root, trial_type="speech", echo="1")),
        (narratives, discover_runs(narratives, tasks=["pieman", "tunnel", "milkyway"])),
    ]
    names = {
        "subject": "subject",
        "session": "session",
        "task": "task",
        "acquisition": "acquisition",
        "run": "run",
        "echo": "echo",
    }
    for tree, runs in cases + [(lebel, None)]:
        layout = bids.BIDSLayout(str(tree), validate=False)
        paths = (
            [r.bold_path for r in runs]
            if runs
            else sorted(lebel.glob("sub-*/ses-*/func/*_bold.nii.gz"))
        )
        for index, path in enumerate(paths):
            assert read_sidecar(path, tree) == layout.get_metadata(str(path)), path
            if runs is None:
                continue
            entities = layout.get_file(str(path)).get_entities()
            for ours, theirs in names.items():
                expected = entities.get(theirs)
                assert getattr(runs[index], ours) == (
                    None if expected is None else str(expected)
                ), (path, ours)


def test_mapping_table_duplicates_and_echoes_name_the_rows(lebel, tmp_path):
    table = tmp_path / "map.tsv"
    table.write_text(
        "subject\ttask\trun\tbold\tstimulus\tonset\techo\n"
        f"UTS01\tsouls\t\t{SOULS}\tsouls.wav\t10\t1\n"
        f"UTS01\tsouls\t\t{SOULS}\tsouls.wav\t10\t2\n"
    )
    with pytest.raises(
        ValueError, match=r"multi-echo.*row 1 \(line 2\).*row 2 \(line 3\).*--echo N"
    ):
        discover_runs(lebel, mapping=table)
    (run,) = discover_runs(lebel, mapping=table, echo="2")
    assert run.echo == "2" and run.origin.endswith("row 2 (line 3)")
    table.write_text(table.read_text().replace("\t1\n", "\t2\n"))
    with pytest.raises(
        ValueError,
        match=r"several files describe the run sub-UTS01_task-souls: .*row 1 \(line 2\).*row 2 \(line 3\)",
    ):
        discover_runs(lebel, mapping=table)


def test_coverage_error_names_the_mapping_table_row(tmp_path):
    make_bids(tmp_path / "bids", subjects=("01",), tasks=("alpha",))
    table = tmp_path / "map.tsv"
    table.write_text(
        "subject\ttask\trun\tbold\tstimulus\tonset\tduration\n"
        "01\talpha\t\tsub-01/func/sub-01_task-alpha_bold.nii.gz\talpha_audio.wav\t30\t6\n"
    )
    with pytest.raises(
        ValueError,
        match=r"sub-01_task-alpha_bold.nii.gz \(mapping table .*map.tsv, row 1 \(line 2\)\)",
    ):
        prepare_dataset(tmp_path / "bids", tmp_path / "out", mapping=table, progress=False)
    assert not (tmp_path / "out").exists()


# --- alignments -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "stored",
    [
        "book_section1.TextGrid",
        "book_section_1.TextGrid",
        "Book-Section-1.TextGrid",
        "book_section-1.TextGrid",
    ],
)
def test_alignment_found_by_common_spellings_of_the_stimulus_name(tmp_path, stored):
    (tmp_path / "stimuli").mkdir()
    wav = tmp_path / "stimuli" / "book_section-1.wav"
    wav.write_bytes(b"")
    (tmp_path / "stimuli" / stored).write_text("stub")
    assert find_alignment(tmp_path, wav) == tmp_path / "stimuli" / stored
    # Negative control: another section is not this one.
    assert find_alignment(tmp_path, tmp_path / "stimuli" / "book_section-2.wav") is None


def test_alignment_spellings_exact_first_and_ambiguity_refused(tmp_path):
    stimuli = tmp_path / "stimuli"
    stimuli.mkdir()
    wav = stimuli / "pieman_audio.wav"
    (stimuli / "Pie_Man.TextGrid").write_text("a")
    assert find_alignment(tmp_path, wav) == stimuli / "Pie_Man.TextGrid"
    (stimuli / "pie-man.TextGrid").write_text("b")
    with pytest.raises(ValueError, match="ambiguous.*'alignment' column"):
        find_alignment(tmp_path, wav)
    (stimuli / "pieman.TextGrid").write_text("c")
    assert find_alignment(tmp_path, wav) == stimuli / "pieman.TextGrid"


def test_a_stimulus_without_alignment_warns_once_naming_the_places(narratives):
    with pytest.warns(UserWarning) as record:
        runs = discover_runs(narratives, subjects=["001"], tasks=["pieman"])
    assert len(runs) == 2 and all(r.alignment_path is None for r in runs)
    messages = [str(w.message) for w in record if "alignment" in str(w.message)]
    assert len(messages) == 1 and "'pieman'" in messages[0]
    assert (
        "stimuli/gentle/pieman/align.json" in messages[0]
        and "TextGrids/pieman.TextGrid" in messages[0]
    )


def test_mapping_table_alignment_column_names_a_misnamed_file(lebel, tmp_path):
    root = clone(lebel, tmp_path)
    shutil.copyfile(root / "derivative/TextGrids/souls.TextGrid", root / "souls words.TextGrid")
    table = tmp_path / "map.tsv"
    table.write_text(
        "subject\ttask\trun\tbold\tstimulus\tonset\talignment\n"
        f"UTS01\tsouls\t\t{SOULS}\tsouls.wav\t10\tsouls words.TextGrid\n"
    )
    (run,) = read_mapping_table(table, root=root)
    assert run.alignment_path == root / "souls words.TextGrid"


# --- one WAV, one story position --------------------------------------------------------------


def test_prettymouth_runs_disagreeing_about_the_story_are_refused_with_both_positions(narratives):
    with pytest.raises(ValueError) as info:
        discover_runs(narratives, tasks="prettymouth")
    message = str(info.value)
    assert "stimulus 'prettymouth' disagree" in message
    assert (
        "sub-038_task-prettymouth_bold.nii.gz (events file" in message
        and "story at 15 s" in message
    )
    assert (
        "sub-105_task-prettymouth_bold.nii.gz (events file" in message
        and "story at 13.5 s" in message
    )
    assert "--exclude" in message and "--align-on prettymouth=first" in message


def test_prettymouth_is_accepted_when_excluded_or_aligned_on_a_row(narratives):
    (run,) = discover_runs(narratives, tasks="prettymouth", exclude=["sub-105_task-prettymouth"])
    assert run.subject == "038"
    with pytest.warns(UserWarning, match="match no run here"):
        assert discover_runs(narratives, tasks="prettymouth", exclude=SCAN_EXCLUDE) == []
    runs = discover_runs(narratives, tasks="prettymouth", align_on={"prettymouth": "first"})
    assert [(r.onset, r.story_offset) for r in runs] == [(0.0, 15.0), (0.0, 13.5)]
    with pytest.raises(ValueError, match="no position of the story .* more than half"):
        discover_runs(narratives, tasks="prettymouth", align_on="story")
    with pytest.raises(ValueError, match=r"align_on for stimulus 'prettymouth' is 'music'"):
        discover_runs(narratives, tasks="prettymouth", align_on="music")
    with pytest.raises(ValueError, match=r"align_on names stimuli \['pretymouth'\]"):
        discover_runs(narratives, tasks="prettymouth", align_on={"pretymouth": "first"})


def test_align_on_story_moves_the_minority_run(narratives):
    runs = discover_runs(narratives, tasks="prettymouth", align_on="first")
    third = runs[0].__class__(**{**runs[0].__dict__, "subject": "200"})
    with pytest.warns(
        UserWarning,
        match=r"sub-105_task-prettymouth_bold.nii.gz .*aligned on its story row.*starts at -1.5 s",
    ):
        aligned = check_story_positions(runs + [third], "story")
    moved = next(r for r in aligned if r.subject == "105")
    assert (moved.onset, moved.story_offset, moved.duration) == (-1.5, 15.0, 691.0)
    # Negative control: within a tenth of a TR (0.15 s) runs agree and nothing moves.
    close = runs[1].__class__(**{**runs[1].__dict__, "story_offset": 15.1})
    assert check_story_positions([runs[0], close]) == [runs[0], close]


# --- exclusions -------------------------------------------------------------------------------


def test_narratives_published_exclusion_list_reads_and_matches_runs(narratives, tmp_path):
    entries = read_exclusions(SCAN_EXCLUDE)
    assert len(entries) == 27 and "sub-001_task-pieman_run-1" in entries
    kept = discover_runs(narratives, tasks=["pieman", "tunnel", "milkyway"], exclude=SCAN_EXCLUDE)
    assert [r.key for r in kept] == ["sub-001_task-tunnel", "sub-115_task-milkyway"]
    text = tmp_path / "exclude.txt"
    text.write_text(
        "# scans with motion\nsub-001_task-tunnel_bold.nii.gz\n\nsub-115_*  # by pattern\n"
    )
    assert read_exclusions(text) == ("sub-001_task-tunnel_bold.nii.gz", "sub-115_*")
    runs = discover_runs(narratives, tasks=["tunnel", "milkyway"], exclude=text)
    assert [r.key for r in runs] == ["sub-038_task-milkyway", "sub-105_task-milkyway"]
    text.write_text("sub-001_task-tunnel\nmotion!\n")
    with pytest.raises(ValueError, match=r"exclude.txt, line 2: exclusion entry 'motion!'"):
        read_exclusions(text)
    with pytest.raises(FileNotFoundError, match="exclusion file not found"):
        read_exclusions(tmp_path / "absent.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="bad.json is not valid JSON"):
        read_exclusions(tmp_path / "bad.json")


def test_exclude_reaches_prepare_and_the_cli(tmp_path):
    from wav2brain.cli import main

    mask = make_bids(tmp_path / "bids")["mask"]
    (tmp_path / "exclude.txt").write_text("sub-02\n")
    out = prepare_dataset(
        tmp_path / "bids",
        tmp_path / "a",
        exclude=tmp_path / "exclude.txt",
        mask=mask,
        cleaning=RAW,
        progress=False,
    )
    manifest = json.loads((out / "wav2brain_prepare.json").read_text())
    assert sorted(manifest["runs"]) == ["sub-01_task-alpha", "sub-01_task-beta"]
    argv = [
        "prepare",
        str(tmp_path / "bids"),
        "--out",
        str(tmp_path / "b"),
        "--quiet",
        "--mask",
        str(mask),
        "--exclude",
        str(tmp_path / "exclude.txt"),
        "--tasks",
        "alpha",
    ]
    assert main(argv) == 0
    assert sorted(json.loads((tmp_path / "b" / "wav2brain_prepare.json").read_text())["runs"]) == [
        "sub-01_task-alpha"
    ]


def test_narratives_converter_applies_the_published_list_by_default(narratives, tmp_path, capsys):
    narratives_script = load_script("narratives")
    argv = [str(narratives), "--out", str(tmp_path / "out"), "--quiet", "--tasks", "prettymouth"]
    with (
        pytest.warns(UserWarning, match="match no run here"),
        pytest.raises(ValueError, match="no functional runs"),
    ):
        narratives_script.main(argv)  # both prettymouth scans are on the authors' list
    with pytest.raises(ValueError, match="disagree about where the story starts"):
        narratives_script.main(argv + ["--keep-excluded"])
    with pytest.raises(SystemExit):
        narratives_script.main(argv + ["--keep-excluded", "--exclude", str(SCAN_EXCLUDE)])
    assert "contradict" in capsys.readouterr().err


def test_align_on_option_parsing():
    from wav2brain.commands.prepare import align_on_from_args

    assert align_on_from_args(None) is None
    assert align_on_from_args(["story"]) == "story"
    assert align_on_from_args(["prettymouth=first", "pieman=story"]) == {
        "prettymouth": "first",
        "pieman": "story",
    }
    with pytest.raises(ValueError, match="not both"):
        align_on_from_args(["story", "pieman=first"])
    with pytest.raises(ValueError, match="twice"):
        align_on_from_args(["pieman=first", "pieman=story"])


# --- LeBel repeats ----------------------------------------------------------------------------


def test_lebel_repeats_are_separate_runs_of_one_stimulus(lebel, tmp_path):
    import h5py

    root = clone(lebel, tmp_path)
    keep = root / "derivative" / "preprocessed_data"
    for path in keep.glob("*/*.hf5"):
        if path.stem != "wheretheressmoke" or path.parent.name != "UTS01":
            os.unlink(path)
    smoke = keep / "UTS01" / "wheretheressmoke.hf5"
    with h5py.File(smoke, "r") as handle:
        data = np.asarray(handle["data"])
    assert data.ndim == 3  # [repeats, TRs, voxels], as DERIVED_SHAPES.tsv infers
    lebel_script = load_script("lebel")
    rows = lebel_script.mapping_rows(root, lebel_script.DEFAULT_ONSET_S)
    assert [(r["run"], r["repeat"]) for r in rows] == [
        (str(k + 1), str(k)) for k in range(data.shape[0])
    ]
    table = lebel_script.write_mapping(rows, tmp_path / "map.tsv")
    runs = discover_runs(root, mapping=read_mapping_table(table, root=root))
    assert [r.key for r in runs] == [
        f"sub-UTS01_task-wheretheressmoke_run-{k + 1}" for k in range(data.shape[0])
    ]
    assert {r.stimulus_id for r in runs} == {"wheretheressmoke"}
    from wav2brain.data.fmri import load_bold

    for run in runs[:2]:
        bold = load_bold(run, cleaning=RAW)
        np.testing.assert_allclose(bold.data, data[run.repeat].astype(np.float32), rtol=1e-6)
    with pytest.raises(ValueError, match=r"repeat 99 asked of data of shape"):
        load_bold(runs[0].__class__(**{**runs[0].__dict__, "repeat": 99}), cleaning=RAW)
    assert not math.isnan(runs[0].tr)


def test_errors_raised_below_a_row_still_name_the_row(lebel, tmp_path):
    root = clone(lebel, tmp_path)
    rewrite(root / "stimuli" / "souls.wav", b"not a wav")
    with pytest.raises(ValueError, match=r"map.tsv, row 1 \(line 2\): .*souls.wav"):
        read_mapping_table(souls_table(root, tmp_path, "2.0"), root=root)
    rewrite(root / "sub-UTS01/ses-2/func/sub-UTS01_ses-2_task-souls_bold.json", "{")
    rewrite(root / "stimuli" / "souls.wav", (lebel / "stimuli" / "souls.wav").read_bytes())
    with pytest.raises(
        ValueError, match=r"map.tsv, row 1 \(line 2\): sidecar .*souls_bold.json is not valid JSON"
    ):
        read_mapping_table(souls_table(root, tmp_path, "2.0"), root=root)


def test_subject_given_as_a_number_matches_its_zero_padded_label(narratives, tmp_path):
    runs = discover_runs(narratives, subjects=["1"], tasks=["pieman"], runs=["01"])
    assert [r.key for r in runs] == ["sub-001_task-pieman_run-1"]
    root = clone(narratives, tmp_path)
    shutil.copytree(root / "sub-001", root / "sub-01")
    for path in (root / "sub-01").rglob("sub-001_*"):
        path.rename(path.with_name(path.name.replace("sub-001_", "sub-01_")))
    assert {r.subject for r in discover_runs(root, subjects=["01"], tasks=["tunnel"])} == {"01"}
    with pytest.raises(ValueError, match=r"sub-1 matches several labels \['001', '01'\]"):
        discover_runs(root, subjects=["1"], tasks=["tunnel"])


def test_unknown_mapping_table_column_is_warned_about(lebel, tmp_path):
    table = tmp_path / "map.tsv"
    table.write_text(
        "subject\ttask\trun\tbold\tstimulus\tonset\tnotes\n"
        f"UTS01\tsouls\t\t{SOULS}\tsouls.wav\t10\t700\n"
    )
    with pytest.warns(UserWarning, match=r"column\(s\) \['notes'\] are not read"):
        (run,) = read_mapping_table(table, root=lebel)
    assert run.duration == 730.0  # the WAV's length (a misspelt known column is an error)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # negative control: known columns only, no warning
        read_mapping_table(souls_table(lebel, tmp_path, "2.0"), root=lebel)


def test_lebel_converter_prepares_each_repeat_as_a_run(lebel, tmp_path):
    import h5py

    from test_hf_layout import load
    from wav2brain.data.hf_layout import RESPONSES

    root = clone(lebel, tmp_path)
    for path in (root / "derivative" / "preprocessed_data").glob("*/*.hf5"):
        if path.stem != "wheretheressmoke" or path.parent.name != "UTS01":
            os.unlink(path)
    with h5py.File(root / "derivative/preprocessed_data/UTS01/wheretheressmoke.hf5", "r") as handle:
        data = np.asarray(handle["data"], dtype=np.float32)
    out = tmp_path / "hf"
    argv = [str(root), "--out", str(out), "--quiet", "--no-detrend", "--no-standardize"]
    assert load_script("lebel").main(argv) == 0
    rows = load(out, RESPONSES).with_format("numpy")
    assert sorted(int(r) for r in rows["run"]) == list(range(1, data.shape[0] + 1))
    assert set(rows["stimulus_id"]) == {"wheretheressmoke"}
    for row in rows:
        np.testing.assert_allclose(row["bold"], data[int(row["run"]) - 1], rtol=1e-6)


def test_an_alignment_beside_its_stimulus_is_found_after_the_usual_places(tmp_path):
    audio = tmp_path / "stimuli" / "audio"
    audio.mkdir(parents=True)
    wav = audio / "story01_audio.wav"
    wav.write_bytes(b"")
    assert find_alignment(tmp_path, wav) is None
    (audio / "story02_align.json").write_text("{}")  # another story's: not this one
    assert find_alignment(tmp_path, wav) is None
    (audio / "story01_align.json").write_text("{}")
    assert find_alignment(tmp_path, wav) == audio / "story01_align.json"
    (tmp_path / "stimuli" / "story01_align.json").write_text("{}")  # a usual place wins
    assert find_alignment(tmp_path, wav) == tmp_path / "stimuli" / "story01_align.json"


def test_an_alignment_beside_its_stimulus_is_found_under_a_relative_root(tmp_path, monkeypatch):
    """Study files name BIDS roots relative to the working folder (data.bids: ds)."""
    audio = tmp_path / "ds" / "stimuli" / "audio"
    audio.mkdir(parents=True)
    (audio / "story01_audio.wav").write_bytes(b"")
    (audio / "Story01_align.json").write_text("{}")  # respelled, beside the audio
    monkeypatch.chdir(tmp_path)
    wav = Path("ds/stimuli/audio/story01_audio.wav")
    assert find_alignment(Path("ds"), wav) == Path("ds/stimuli/audio/Story01_align.json")
