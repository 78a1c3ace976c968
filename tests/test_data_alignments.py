"""Gentle align.json and Praat TextGrid readers (LeBel's TextGrids fabricated from the manifest)."""

from __future__ import annotations

import json
import warnings

import pytest

from fabricate import fabricate_layout, write_textgrid
from wav2brain.data import (
    AlignedToken,
    Alignment,
    read_alignment,
    read_gentle_json,
    read_textgrid,
    write_gentle_json,
)

GENTLE = {
    "transcript": "I began my career",
    "words": [
        {
            "alignedWord": "i",
            "case": "success",
            "start": 0.5,
            "end": 0.62,
            "startOffset": 0,
            "endOffset": 1,
            "word": "I",
            "phones": [{"duration": 0.12, "phone": "ay_S"}],
        },
        {
            "alignedWord": "began",
            "case": "success",
            "start": 0.62,
            "end": 1.0,
            "word": "began",
            "phones": [
                {"duration": 0.1, "phone": "b_B"},
                {"duration": 0.1, "phone": "ih_I"},
                {"duration": 0.08, "phone": "g_I"},
                {"duration": 0.1, "phone": "ae_E"},
            ],
        },
        {"case": "not-found-in-audio", "word": "my", "startOffset": 8, "endOffset": 10},
        {"alignedWord": "career", "case": "success", "start": 1.3, "end": 1.8, "word": "career"},
    ],
}


def test_gentle_reader(tmp_path):
    path = tmp_path / "align.json"
    path.write_text(json.dumps(GENTLE))
    alignment = read_gentle_json(path)
    assert [w.label for w in alignment.words] == ["I", "began", "career"]  # "my" not found
    assert alignment.words[1] == AlignedToken("began", 0.62, 1.0)
    labels = [p.label for p in alignment.phonemes]
    assert labels == ["ay", "b", "ih", "g", "ae"]
    starts = [round(p.start, 6) for p in alignment.phonemes]
    assert starts == [0.5, 0.62, 0.72, 0.82, 0.9]
    assert alignment.phonemes[-1].end == pytest.approx(1.0)
    assert read_alignment(path) == alignment


def test_gentle_round_trip_is_exact(tmp_path):
    original = Alignment(
        words=[AlignedToken("Hello", 0.1, 0.5), AlignedToken("world", 0.6, 1.1)],
        phonemes=[
            AlignedToken("h", 0.1, 0.2),
            AlignedToken("@", 0.2, 0.3),
            AlignedToken("l", 0.3, 0.5),
            AlignedToken("w", 0.65, 0.8),  # a gap inside the word: needs the start key
            AlignedToken("3:", 0.8, 1.1),
        ],
    )
    path = write_gentle_json(
        original, tmp_path / "gentle" / "story" / "align.json", "Hello, world."
    )
    assert sorted(p.name for p in path.parent.iterdir()) == ["align.json"]  # no temp file left
    doc = json.loads(path.read_text())
    assert [(w["startOffset"], w["endOffset"]) for w in doc["words"]] == [(0, 5), (7, 12)]
    assert doc["words"][0]["phones"][0]["phone"] == "h_B"
    back = read_gentle_json(path)
    assert back.words == original.words
    assert [(p.label, round(p.start, 9), round(p.end, 9)) for p in back.phonemes] == [
        (p.label, p.start, p.end) for p in original.phonemes
    ]


@pytest.mark.parametrize(
    ("content", "error", "match"),
    [
        ("{not json", ValueError, "is not valid JSON"),
        ('{"transcript": "x"}', ValueError, "has no 'words' list"),
        (
            '{"words": [{"case": "success", "word": "a", "start": 2, "end": 1}]}',
            ValueError,
            "word 0: .*precedes",
        ),
        (
            '{"words": [{"case": "success", "word": "a", "start": 1, "end": 2, "phones": [{}]}]}',
            ValueError,
            "word 0: 'duration'",
        ),
    ],
)
def test_gentle_bad_input(tmp_path, content, error, match):
    path = tmp_path / "align.json"
    path.write_text(content)
    with pytest.raises(error, match=match):
        read_gentle_json(path)


def test_missing_alignment_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        read_gentle_json(tmp_path / "nope.json")
    with pytest.raises(FileNotFoundError, match="nope.TextGrid"):
        read_textgrid(tmp_path / "nope.TextGrid")
    with pytest.raises(ValueError, match="expected a Gentle .json or a Praat .TextGrid"):
        read_alignment(tmp_path / "x.csv")


@pytest.fixture(scope="module")
def lebel_textgrids(real_layouts, tmp_path_factory):
    root = fabricate_layout(real_layouts / "ds003020", tmp_path_factory.mktemp("l") / "ds003020")
    return sorted((root / "derivative" / "TextGrids").glob("*.TextGrid"))


def test_lebel_textgrids_long_and_short_formats(lebel_textgrids):
    assert len(lebel_textgrids) == 6
    texts = [p.read_text() for p in lebel_textgrids]
    assert any("item [1]:" in t for t in texts) and any("item [" not in t for t in texts)
    for path in lebel_textgrids[1:]:  # the first one holds the overlap
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            alignment = read_textgrid(path)
        assert alignment.words[0] == AlignedToken("word0", 0.1, 0.6)
        assert alignment.phonemes[:2] == [AlignedToken("AH", 0.1, 0.3), AlignedToken("T", 0.3, 0.6)]
        assert len(alignment.phonemes) == 2 * len(alignment.words)
        assert not {"", "sp"} & {t.label for t in alignment.words + alignment.phonemes}


def test_long_and_short_formats_agree(tmp_path):
    write_textgrid(tmp_path / "long.TextGrid", 20.0, short=False, overlap=False)
    write_textgrid(tmp_path / "short.TextGrid", 20.0, short=True, overlap=False)
    assert read_textgrid(tmp_path / "long.TextGrid") == read_textgrid(tmp_path / "short.TextGrid")


def test_overlapping_interval_is_clipped_with_a_warning(lebel_textgrids):
    path = lebel_textgrids[0]
    with pytest.warns(UserWarning, match=f"{path.name}: clipped or dropped 1 overlapping"):
        alignment = read_textgrid(path)
    phones = alignment.phonemes
    assert all(b.start >= a.end - 1e-12 for a, b in zip(phones, phones[1:], strict=False))
    assert phones[1] == AlignedToken("T", 0.3, 0.75)  # ran 0.05 s into the next word's phone
    assert phones[2] == AlignedToken("AH", 0.75, 0.9)  # clipped to start where T ends


def test_tier_selection(tmp_path):
    path = tmp_path / "named.TextGrid"
    write_textgrid(path, 5.0, short=True, overlap=False)
    text = path.read_text()
    swapped = text.replace('"phone"', '"A"').replace('"word"', '"B"')
    path.write_text(swapped)
    with pytest.raises(
        ValueError, match=r"no word tier .*tiers: \['A', 'B'\]\. Name .*--word-tier"
    ):
        read_textgrid(path)  # never guessed by position
    by_name = read_textgrid(path, word_tier="b", phone_tier="A")  # names in any case
    assert by_name.words[0].label == "word0" and by_name.phonemes[0].label == "AH"
    assert read_textgrid(path, word_tier=1, phone_tier=0) == by_name
    assert read_textgrid(path, word_tier=-1, phone_tier=0) == by_name
    with pytest.raises(ValueError, match=r"no word tier named 'words'; tiers: \['A', 'B'\]"):
        read_textgrid(path, word_tier="words")
    with pytest.raises(ValueError, match="no tier 5"):
        read_textgrid(path, phone_tier=5)
    with pytest.raises(ValueError, match="word and phone tiers are the same tier 'B'"):
        read_textgrid(path, word_tier="B", phone_tier=1)


def textgrid(path, tiers: dict[str, list[tuple[float, float, str]]]):
    """Write a short-format TextGrid with the given tiers (name -> intervals) over 2 s."""
    from fabricate import _textgrid_text

    path.write_text(_textgrid_text(list(tiers.items()), 2.0, short=True))
    return path


WORDS = [(0.0, 0.5, "hello"), (0.5, 0.6, ""), (0.6, 1.0, "world")]
PHONES = [(0.0, 0.2, "HH"), (0.2, 0.5, "OW"), (0.6, 1.0, "W")]


def test_a_single_word_tier_gives_words_and_no_phonemes(tmp_path):
    """The bug this guards: a lone 'words' tier used to be copied into the phonemes."""
    for name in ("words", "Word"):
        alignment = read_textgrid(textgrid(tmp_path / f"{name}.TextGrid", {name: WORDS}))
        assert [w.label for w in alignment.words] == ["hello", "world"]
        assert alignment.phonemes == []
    other = textgrid(tmp_path / "extra.TextGrid", {"speaker": [(0.0, 1.0, "A")], "words": WORDS})
    alignment = read_textgrid(other)
    assert [w.label for w in alignment.words] == ["hello", "world"] and alignment.phonemes == []


def test_a_single_phone_tier_gives_phonemes_only(tmp_path):
    alignment = read_textgrid(textgrid(tmp_path / "p.TextGrid", {"phones": PHONES}))
    assert alignment.words == [] and [p.label for p in alignment.phonemes] == ["HH", "OW", "W"]


@pytest.mark.parametrize(
    ("tiers", "match"),
    [
        ({"Mary": WORDS}, r"no word tier .*tiers: \['Mary'\]\. Name the word tier .*--word-tier"),
        ({"phones": PHONES, "ortho": WORDS}, r"no word tier .*\['phones', 'ortho'\]"),
        ({"word": WORDS, "Words": WORDS}, r"tiers \[0, 1\] are all named like a word tier"),
        ({"words": WORDS, "phone": PHONES, "PHONES": PHONES}, "all named like a phone tier"),
    ],
)
def test_tiers_that_cannot_be_told_apart_are_errors(tmp_path, tiers, match):
    with pytest.raises(ValueError, match=match):
        read_textgrid(textgrid(tmp_path / "x.TextGrid", tiers))


def test_named_tiers_pass_through_read_alignment(tmp_path):
    path = textgrid(tmp_path / "mary.TextGrid", {"Mary": WORDS, "segments": PHONES})
    alignment = read_alignment(path, word_tier="Mary", phone_tier="segments")
    assert [w.label for w in alignment.words] == ["hello", "world"]
    assert [p.label for p in alignment.phonemes] == ["HH", "OW", "W"]
    gentle = tmp_path / "align.json"
    gentle.write_text(json.dumps(GENTLE))
    with pytest.raises(ValueError, match="Gentle .json, which has no tiers"):
        read_alignment(gentle, word_tier="Mary")


def test_utf16_textgrid(tmp_path):
    path = tmp_path / "utf16.TextGrid"
    write_textgrid(path, 3.0, short=False, overlap=False)
    text = path.read_text().replace("word0", "café")
    path.write_bytes(text.encode("utf-16"))
    assert read_textgrid(path).words[0].label == "café"


def test_bad_textgrids(tmp_path):
    path = tmp_path / "bad.TextGrid"
    path.write_text("this is not a textgrid")
    with pytest.raises(ValueError, match="not a Praat text TextGrid"):
        read_textgrid(path)
    write_textgrid(path, 5.0, short=True, overlap=False)
    path.write_text(path.read_text()[:300])
    with pytest.raises(ValueError, match="truncated or malformed"):
        read_textgrid(path)
