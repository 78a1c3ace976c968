"""Alignments through prepare: tiers named by option or table column, stimuli without one carded."""

from __future__ import annotations

import pytest

from fabricate import _textgrid_text
from test_hf_layout import load
from test_prepare import RAW, make_bids
from wav2brain.cli import main as cli
from wav2brain.data.hf_layout import CARD_NAME, STIMULI
from wav2brain.data.prepare import prepare_dataset

WORDS = [(0.5, 1.0, "hello"), (1.0, 1.2, ""), (1.2, 2.0, "world")]
PHONES = [(0.5, 0.7, "HH"), (0.7, 1.0, "OW"), (1.2, 2.0, "W")]


def textgrid(path, tiers: dict) -> None:
    path.write_text(_textgrid_text(list(tiers.items()), 6.0, short=False))


@pytest.fixture
def root(tmp_path):
    root = tmp_path / "bids"
    make_bids(root, subjects=("01",))
    return root


def prepare(root, out, **kwargs):
    return prepare_dataset(
        root, out, mask=root / "mask.nii.gz", cleaning=RAW, progress=False, **kwargs
    )


def stimuli(out) -> dict:
    return {row["id"]: row for row in load(out, STIMULI)}


def test_a_single_tier_textgrid_gives_words_only_and_the_card_lists_unaligned_stimuli(
    root, tmp_path
):
    textgrid(root / "stimuli" / "alpha.TextGrid", {"words": WORDS})  # beta has no alignment
    out = prepare(root, tmp_path / "out")
    rows = stimuli(out)
    assert [w["label"] for w in rows["alpha"]["words"]] == ["hello", "world"]
    assert rows["alpha"]["phonemes"] == []
    assert rows["beta"]["words"] == rows["beta"]["phonemes"] == []
    card = (out / CARD_NAME).read_text()
    assert "| alpha | 6.00 | 2 | 0 | stimuli/alpha.TextGrid |" in card
    assert "| beta | 6.00 | 0 | 0 | none |" in card
    assert "without a word/phoneme alignment (no words or phonemes stored): 1 (beta)" in card


def test_a_card_with_every_stimulus_aligned_lists_none(root, tmp_path):
    for task in ("alpha", "beta"):
        textgrid(root / "stimuli" / f"{task}.TextGrid", {"word": WORDS, "phone": PHONES})
    out = prepare(root, tmp_path / "out")
    assert [p["label"] for p in stimuli(out)["beta"]["phonemes"]] == ["HH", "OW", "W"]
    card = (out / CARD_NAME).read_text()
    assert "without a word/phoneme alignment (no words or phonemes stored): 0\n" in card


def test_unnamed_tiers_fail_before_any_writing_and_the_options_name_them(root, tmp_path):
    textgrid(root / "stimuli" / "alpha.TextGrid", {"Mary": WORDS, "segments": PHONES})
    with pytest.raises(ValueError, match=r"alpha.TextGrid: no word tier .*--word-tier"):
        prepare(root, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    out = tmp_path / "out"
    argv = ["prepare", str(root), "--out", str(out), "--mask", str(root / "mask.nii.gz")]
    argv += ["--no-detrend", "--no-standardize"]
    assert cli([*argv, "--quiet", "--word-tier", "mary", "--phone-tier", "Segments"]) == 0
    alpha = stimuli(out)["alpha"]
    assert [w["label"] for w in alpha["words"]] == ["hello", "world"]
    assert [p["label"] for p in alpha["phonemes"]] == ["HH", "OW", "W"]


def write_mapping(root, rows: list[dict]) -> object:
    header = ["subject", "task", "run", "bold", "stimulus", "onset", "word_tier", "phone_tier"]
    lines = ["\t".join(header)] + ["\t".join(row.get(k, "") for k in header) for row in rows]
    path = root / "mapping.tsv"
    path.write_text("\n".join(lines) + "\n")
    return path


def run_row(task: str, subject: str = "01", **tiers) -> dict:
    bold = f"sub-{subject}/func/sub-{subject}_task-{task}_bold.nii.gz"
    row = {"subject": subject, "task": task, "run": "", "bold": bold, "onset": "3.0"}
    return {**row, "stimulus": f"{task}_audio.wav", **tiers}


def test_mapping_table_columns_name_the_tiers_per_row(root, tmp_path):
    textgrid(root / "stimuli" / "alpha.TextGrid", {"Mary": WORDS, "segments": PHONES})
    textgrid(root / "stimuli" / "beta.TextGrid", {"words": WORDS})
    mapping = write_mapping(
        root,
        [run_row("alpha", word_tier="Mary", phone_tier="segments"), run_row("beta")],
    )
    out = prepare(root, tmp_path / "out", mapping=mapping)
    rows = stimuli(out)
    assert [w["label"] for w in rows["alpha"]["words"]] == ["hello", "world"]
    assert [p["label"] for p in rows["alpha"]["phonemes"]] == ["HH", "OW", "W"]
    assert [w["label"] for w in rows["beta"]["words"]] == ["hello", "world"]
    assert rows["beta"]["phonemes"] == []


def test_runs_of_one_stimulus_naming_different_tiers_are_refused(tmp_path):
    root = tmp_path / "bids"
    make_bids(root, subjects=("01", "02"), tasks=("alpha",))
    textgrid(root / "stimuli" / "alpha.TextGrid", {"Mary": WORDS, "Joe": WORDS})
    mapping = write_mapping(
        root, [run_row("alpha", "01", word_tier="Mary"), run_row("alpha", "02", word_tier="Joe")]
    )
    with pytest.raises(ValueError, match="stimulus 'alpha': its runs name different alignments"):
        prepare(root, tmp_path / "out", mapping=mapping)
    assert not (tmp_path / "out").exists()
