"""Run discovery on the real Narratives (ds002345) and LeBel (ds003020) layouts."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import pytest

from fabricate import lebel_mapping
from wav2brain.data import RunSpec, discover_runs, read_mapping_table
from wav2brain.data.bids import find_confounds

# key: (stimulus id, WAV onset s, TR s, s of WAV to cover, story offset in the WAV s). The WAV
# starts at the first events row naming it (the music row when there is one).
NARRATIVES_STORY_RUNS = {
    "sub-001_task-pieman_run-1": ("pieman", 0.0, 1.5, 437.0, 15.0),
    "sub-001_task-pieman_run-2": ("pieman", 0.0, 1.5, 437.0, 15.0),
    "sub-001_task-tunnel": ("tunnel", 3.0, 1.5, 1534.0, 0.0),
    "sub-038_task-milkyway": ("milkywayvodka", 0.0, 1.5, 419.0, 15.0),
    "sub-038_task-pieman": ("pieman", 0.0, 1.5, 437.0, 15.0),
    "sub-038_task-prettymouth": ("prettymouth", 0.0, 1.5, 691.0, 15.0),
    "sub-105_task-milkyway": ("milkywayoriginal", 0.0, 1.5, 417.5, 13.5),
    "sub-105_task-prettymouth": ("prettymouth", 0.0, 1.5, 689.5, 13.5),
    "sub-115_task-milkyway": ("milkywaysynonyms", 0.0, 1.52, 425.0, 21.0),
}
STORY_TASKS = ["pieman", "tunnel", "milkyway", "prettymouth"]


def clone(root: Path, tmp_path: Path) -> Path:
    """A hard-linked copy; change files with :func:`rewrite` so the original stays intact."""
    return Path(shutil.copytree(root, tmp_path / root.name, copy_function=os.link))


def rewrite(path: Path, content: str | bytes) -> None:
    path.unlink(missing_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)


ALIGN_PRETTYMOUTH = {"prettymouth": "first"}
"""The two prettymouth runs of the layout disagree about the story's place (15.0 vs 13.5 s)."""


def test_narratives_all_story_runs(narratives):
    with pytest.warns(UserWarning, match="shapes(physical|social)_audio.wav") as record:
        runs = discover_runs(narratives, on_missing_stimulus="skip", align_on=ALIGN_PRETTYMOUTH)
    assert len([w for w in record if "no stimulus" in str(w.message)]) == 2
    found = {r.key: (r.stimulus_id, r.onset, r.tr, r.duration, r.story_offset) for r in runs}
    assert found == NARRATIVES_STORY_RUNS
    pieman = next(r for r in runs if r.key == "sub-001_task-pieman_run-1")
    assert pieman.run == "1" and pieman.session is None and pieman.space == "native"
    assert pieman.stimulus_path == narratives / "stimuli" / "pieman_audio.wav"
    assert pieman.bold_path.name == "sub-001_task-pieman_run-1_bold.nii.gz"


def test_narratives_missing_stimulus_is_an_error_naming_the_file(narratives):
    with pytest.raises(FileNotFoundError, match="shapesphysical_audio.wav") as info:
        discover_runs(narratives)
    assert "sub-115_task-shapesphysical_events.tsv" in str(info.value)


def test_filters_accept_prefixes_and_runs(narratives):
    runs = discover_runs(narratives, subjects=["sub-001"], tasks="pieman")
    assert [r.key for r in runs] == ["sub-001_task-pieman_run-1", "sub-001_task-pieman_run-2"]
    runs = discover_runs(narratives, subjects=["001"], tasks=["task-pieman"], runs=["run-2"])
    assert [r.key for r in runs] == ["sub-001_task-pieman_run-2"]
    runs = discover_runs(narratives, tasks=["milkyway"])
    assert {r.stimulus_id for r in runs} == {
        "milkywayvodka",
        "milkywayoriginal",
        "milkywaysynonyms",
    }
    assert {r.tr for r in runs if r.subject == "115"} == {1.52}
    with pytest.raises(ValueError, match=r"subjects \['999'\] match no run; labels found: \['001'"):
        discover_runs(narratives, subjects=["999"])


def test_exclude_patterns(narratives):
    runs = discover_runs(narratives, tasks="prettymouth", exclude=["sub-105_task-prettymouth*"])
    assert [r.key for r in runs] == ["sub-038_task-prettymouth"]


def test_junk_files_are_ignored(narratives, tmp_path):
    root = clone(narratives, tmp_path)
    assert (root / "sub-038" / "._.DS_Store").exists()
    func = root / "sub-001" / "func"
    rewrite(func / ".DS_Store", os.urandom(64))
    rewrite(func / "._sub-001_task-pieman_run-1_bold.nii.gz", os.urandom(64))
    rewrite(func / "._sub-001_task-pieman_run-1_events.tsv", os.urandom(64))
    rewrite(func / "._sub-001_task-pieman_run-1_bold.json", os.urandom(64))
    rewrite(root / "stimuli" / "._pieman_audio.wav", os.urandom(64))
    runs = discover_runs(root, tasks=STORY_TASKS, align_on=ALIGN_PRETTYMOUTH)
    assert {r.key for r in runs} == set(NARRATIVES_STORY_RUNS)


def test_lebel_mapping_table_with_top_level_sidecar_tr(lebel):
    runs = discover_runs(lebel, mapping=lebel_mapping(lebel))
    assert len(runs) == 12
    souls = next(r for r in runs if r.key == "sub-UTS01_ses-2_task-souls")
    assert (souls.tr, souls.onset, souls.duration) == (2.0, 10.0, 730.0)
    assert souls.session == "2" and souls.run is None
    assert souls.alignment_path == lebel / "derivative" / "TextGrids" / "souls.TextGrid"
    smoke = next(r for r in runs if r.task == "wheretheressmoke" and r.subject == "UTS02")
    assert smoke.run == "1" and smoke.stimulus_id == "wheretheressmoke"
    assert [r.subject for r in discover_runs(lebel, subjects="UTS02", mapping=runs)] == [
        "UTS02"
    ] * 6


def test_lebel_tr_is_inherited_from_the_task_sidecar(lebel, tmp_path):
    root = clone(lebel, tmp_path)
    run_sidecar = root / "sub-UTS01/ses-2/func/sub-UTS01_ses-2_task-souls_bold.json"
    meta = json.loads(run_sidecar.read_text())
    del meta["RepetitionTime"]
    rewrite(run_sidecar, json.dumps(meta))
    rewrite(root / "task-souls_bold.json", json.dumps({"RepetitionTime": 2.5, "TaskName": "souls"}))
    mapping = lebel_mapping(root)
    runs = {r.key: r for r in discover_runs(root, mapping=mapping)}
    assert runs["sub-UTS01_ses-2_task-souls"].tr == 2.5  # inherited from the top level
    assert runs["sub-UTS02_ses-2_task-souls"].tr == 2.0  # its own sidecar overrides
    rewrite(root / "task-souls_bold.json", json.dumps({"TaskName": "souls"}))
    # No TR in the table or any sidecar: only the image header can tell (RunSpec.tr docstring).
    runs = {r.key: r for r in discover_runs(root, mapping=mapping)}
    souls = runs["sub-UTS01_ses-2_task-souls"]
    assert math.isnan(souls.tr) and souls.tr_sources == ()


def test_lebel_sessions_from_events(lebel, tmp_path):
    root = clone(lebel, tmp_path)
    func = root / "sub-UTS01" / "ses-2" / "func"
    rewrite(
        func / "sub-UTS01_ses-2_task-souls_events.tsv",
        "onset\tduration\ttrial_type\tstim_file\n10\t730\tstory\tsouls.wav\n",
    )
    (run,) = discover_runs(root, subjects="UTS01", tasks="souls")
    assert (run.session, run.run, run.tr, run.onset, run.stimulus_id) == (
        "2",
        None,
        2.0,
        10.0,
        "souls",
    )
    assert run.key == "sub-UTS01_ses-2_task-souls"


def test_lebel_preprocessed_mapping(lebel):
    runs = discover_runs(lebel, mapping=lebel_mapping(lebel, preprocessed=True))
    assert len(runs) == 12 and all(r.is_array for r in runs)
    souls = next(r for r in runs if r.key == "sub-UTS01_ses-2_task-souls")
    assert souls.bold_path == lebel / "derivative/preprocessed_data/UTS01/souls.hf5"
    assert (souls.onset, souls.tr, souls.duration) == (-10.0, 2.0, None)


def test_lebel_without_mapping_says_no_stimulus(lebel):
    with pytest.raises(FileNotFoundError, match="no stimulus for .*_bold.nii.gz"):
        discover_runs(lebel)


def test_mapping_table_csv_absolute_paths_and_tr_column(lebel, tmp_path):
    table = tmp_path / "map.csv"
    bold = lebel / "sub-UTS01/ses-2/func/sub-UTS01_ses-2_task-avatar_bold.nii.gz"
    table.write_text(
        "subject,task,run,bold,stimulus,onset,tr,duration,space\n"
        f"sub-UTS01,avatar,n/a,{bold},{lebel / 'stimuli/avatar.wav'},10,2.0045,700,T1w\n"
    )
    (run,) = read_mapping_table(table, root=lebel)
    assert isinstance(run, RunSpec)
    assert (run.subject, run.run, run.tr, run.duration, run.space) == (
        "UTS01",
        None,
        2.0045,
        700.0,
        "T1w",
    )


@pytest.mark.parametrize(
    ("header", "row", "error", "match"),
    [
        (
            "subject,task,bold,stimulus,onset",
            "UTS01,souls,x,souls.wav,10",
            ValueError,
            r"lacks column\(s\) \['run'\]",
        ),
        (
            "subject,task,run,bold,stimulus,onset",
            "UTS01,souls,,BOLD,souls.wav,ten",
            ValueError,
            r"row 1 \(line 2\): onset 'ten'",
        ),
        (
            "subject,task,run,bold,stimulus,onset",
            "UTS01,souls,,missing.nii.gz,souls.wav,10",
            FileNotFoundError,
            r"row 1 \(line 2\): file not found: .*missing.nii.gz",
        ),
        (
            "subject,task,run,bold,stimulus,onset",
            "UTS01,souls,,BOLD,nosuch.wav,10",
            FileNotFoundError,
            r"row 1 \(line 2\): stimulus 'nosuch.wav'",
        ),
        (
            "subject,task,run,bold,stimulus,onset",
            "UTS01,souls,,HF5,souls.wav,-10",
            ValueError,
            "needs a 'tr' column",
        ),
        (
            "subject,task,run,bold,stimulus,onset,confounds",
            "UTS01,souls,,BOLD,souls.wav,10,nosuch_confounds.tsv",
            FileNotFoundError,
            r"row 1 \(line 2\): file not found: .*nosuch_confounds.tsv",
        ),
    ],
)
def test_mapping_table_bad_input(lebel, tmp_path, header, row, error, match):
    row = row.replace("BOLD", "sub-UTS01/ses-2/func/sub-UTS01_ses-2_task-souls_bold.nii.gz")
    row = row.replace("HF5", "derivative/preprocessed_data/UTS01/souls.hf5")
    table = tmp_path / "map.csv"
    table.write_text(f"{header}\n{row}\n")
    with pytest.raises(error, match=match):
        read_mapping_table(table, root=lebel)


def test_unreadable_wav_is_named(narratives, tmp_path):
    root = clone(narratives, tmp_path)
    rewrite(root / "stimuli" / "pieman_audio.wav", b"RIFF\0\0\0\0WAVEjunk" + os.urandom(100))
    with pytest.raises(ValueError, match="cannot read audio file .*pieman_audio.wav"):
        discover_runs(root, tasks="pieman")


def test_unfetched_annex_link_is_named(narratives, tmp_path):
    root = clone(narratives, tmp_path)
    wav = root / "stimuli" / "tunnel_audio.wav"
    wav.unlink()
    wav.symlink_to("../.git/annex/objects/XX/MD5E-s135278558--5d9f.wav")
    with pytest.raises(FileNotFoundError, match="tunnel_audio.wav is a broken link .*datalad get"):
        discover_runs(root, tasks="tunnel")


def test_story_only_wav_named_by_a_music_row_is_flagged(narratives, tmp_path):
    root = clone(narratives, tmp_path)
    rewrite(
        root / "sub-001/func/sub-001_task-tunnel_events.tsv",
        "onset\tduration\ttrial_type\tstim_file\n0\t13\tmusic\ttunnel_audio.wav\n"
        "15\t1534\tstory\ttunnel_audio.wav\n",
    )
    with pytest.warns(UserWarning, match="story ends 1549.00 s .* WAV lasts 1534.00 s"):
        (run,) = discover_runs(root, tasks="tunnel")
    assert (run.onset, run.story_offset, run.duration) == (0.0, 15.0, 1549.0)


def test_run_without_events_or_ambiguous_events(narratives, tmp_path):
    root = clone(narratives, tmp_path)
    func = root / "sub-001" / "func"
    (func / "sub-001_task-tunnel_events.tsv").unlink()
    with pytest.raises(
        FileNotFoundError, match="no stimulus for .*tunnel_bold.nii.gz: no \\*_events"
    ):
        discover_runs(root, tasks="tunnel")
    rewrite(
        func / "sub-001_task-pieman_run-1_events.tsv",
        "onset\tduration\ttrial_type\tstim_file\n15\t422\tstory\tpieman_audio.wav\n"
        "20\t404\tstory\tmilkywayvodka_audio.wav\n",
    )
    with pytest.raises(ValueError, match="pieman_run-1_events.tsv has 2 stimulus rows"):
        discover_runs(root, tasks="pieman")


def test_task_level_events_and_stim_file_relative_to_root(narratives, tmp_path):
    root = clone(narratives, tmp_path)
    (root / "sub-001/func/sub-001_task-tunnel_events.tsv").unlink()
    rewrite(
        root / "task-tunnel_events.tsv",
        "onset\tduration\ttrial_type\tstim_file\n4.5\tn/a\tstory\tstimuli/tunnel_audio.wav\n",
    )
    (run,) = discover_runs(root, tasks="tunnel")
    assert run.onset == 4.5 and run.story_offset == 0.0
    assert run.duration == pytest.approx(1534.0, abs=1e-3)  # from the WAV header


def test_missing_root_and_bad_option(tmp_path):
    with pytest.raises(FileNotFoundError, match="BIDS root not found"):
        discover_runs(tmp_path / "nope")
    with pytest.raises(ValueError, match="on_missing_stimulus"):
        discover_runs(tmp_path, on_missing_stimulus="ignore")


def test_alignment_is_kept_with_the_stimulus(narratives, tmp_path):
    root = clone(narratives, tmp_path)
    gentle = root / "stimuli" / "gentle" / "milkywayvodka" / "align.json"
    gentle.parent.mkdir(parents=True)
    gentle.write_text('{"transcript": "", "words": []}')
    runs = {r.stimulus_id: r for r in discover_runs(root, tasks="milkyway")}
    assert runs["milkywayvodka"].alignment_path == gentle
    assert runs["milkywayoriginal"].alignment_path is None  # never another variant's alignment
    table = tmp_path / "map.tsv"
    table.write_text(
        "subject\ttask\trun\tbold\tstimulus\tonset\talignment\n"
        "001\tpieman\t1\tsub-001/func/sub-001_task-pieman_run-1_bold.nii.gz\tpieman_audio.wav\t15"
        "\tstimuli/gentle/pieman/align.json\n"
    )
    with pytest.raises(
        FileNotFoundError, match=r"row 1 \(line 2\): file not found: .*gentle/pieman/align.json"
    ):
        read_mapping_table(table, root=root)


def test_fmriprep_confounds_are_found_beside_the_run(narratives, tmp_path):
    root = clone(narratives, tmp_path)
    func = root / "sub-001" / "func"
    run1 = func / "sub-001_task-pieman_run-1_desc-confounds_timeseries.tsv"
    run2 = func / "sub-001_task-pieman_run-2_desc-confounds_regressors.tsv"
    for path in (run1, run2, func / "._sub-001_task-tunnel_desc-confounds_timeseries.tsv"):
        path.write_text("trans_x\n0\n")
    runs = {r.key: r for r in discover_runs(root, subjects="001", tasks=["pieman", "tunnel"])}
    assert runs["sub-001_task-pieman_run-1"].confounds_path == run1
    assert runs["sub-001_task-pieman_run-2"].confounds_path == run2
    assert runs["sub-001_task-tunnel"].confounds_path is None


def test_find_confounds_matches_run_entities_not_space_or_desc(tmp_path):
    func = tmp_path / "sub-01" / "ses-1" / "func"
    func.mkdir(parents=True)
    names = [
        "sub-01_ses-1_task-x_run-1_desc-confounds_timeseries.tsv",
        "sub-01_ses-1_task-x_run-1_desc-confounds_regressors.tsv",
        "sub-01_ses-1_task-x_run-2_desc-confounds_regressors.tsv",
        "sub-01_ses-2_task-x_run-3_desc-confounds_timeseries.tsv",
        "sub-01_ses-1_task-y_run-3_desc-confounds_timeseries.tsv",
        "sub-01_ses-1_task-x_run-3_desc-other_timeseries.tsv",
    ]
    for name in names:
        (func / name).write_text("trans_x\n0\n")
    preproc = "sub-01_ses-1_task-x_run-{}_space-MNI152NLin2009cAsym_res-2_desc-preproc_bold.nii.gz"
    assert find_confounds(func / preproc.format(1)) == func / names[0]
    assert find_confounds(func / preproc.format(2)) == func / names[2]
    assert find_confounds(func / preproc.format(3)) is None
    surface = "sub-01_ses-1_task-x_run-2_hemi-L_space-fsaverage5_bold.func.gii"
    assert find_confounds(func / surface) == func / names[2]


def test_mapping_table_confounds_column(lebel, tmp_path):
    confounds = tmp_path / "souls_confounds.tsv"
    confounds.write_text("trans_x\n0\n")
    table = tmp_path / "map.csv"
    bold = "sub-UTS01/ses-2/func/sub-UTS01_ses-2_task-souls_bold.nii.gz"
    table.write_text(
        "subject,task,run,bold,stimulus,onset,confounds\n"
        f"UTS01,souls,,{bold},souls.wav,10,{confounds}\n"
        f"UTS02,souls,,{bold.replace('UTS01', 'UTS02')},souls.wav,10,n/a\n"
    )
    first, second = read_mapping_table(table, root=lebel)
    assert first.confounds_path == confounds and second.confounds_path is None
