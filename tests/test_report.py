"""The study report over a run folder: contents, headline numbers against the tables, bad input.

The study is made once per session by the real commands at the smallest size
(``tests/report_fixtures.py``); everything in it is SIMULATED.
"""

from __future__ import annotations

import base64
import html
import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from report_fixtures import shared_study, write_study
from wav2brain.reports.study_report import NOT_RUN, build_report, read_headline

KEY_PATTERN = re.compile(r'<span data-key="([^"]+)" data-value="([^"]*)">([^<]*)</span>')


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    return shared_study(tmp_path_factory)


@pytest.fixture(scope="module")
def report(study: Path, tmp_path_factory) -> Path:
    """The report of the whole study, built into a copy-free location beside the study."""
    page = tmp_path_factory.mktemp("report") / "report.html"
    return build_report(study, page)


def page_numbers(text: str) -> dict:
    """data-key -> (exact value, shown text) of every headline span in a page."""
    found = {}
    for key, value, shown in KEY_PATTERN.findall(text):
        key = html.unescape(key)
        if key in found:
            raise AssertionError(f"headline key {key} appears twice in the page")
        found[key] = (json.loads(html.unescape(value)), html.unescape(shown))
    return found


def mismatches(page: dict, headline: dict) -> list[str]:
    """Keys whose page value differs from headline.json, or present in only one of them."""
    wrong = [k for k in sorted(set(page) | set(headline)) if k not in page or k not in headline]
    wrong += [k for k in sorted(set(page) & set(headline)) if page[k][0] != headline[k]]
    return wrong


def relative_steps(study: Path, keep: set[str], run: Path) -> dict:
    """The study's step records restricted to ``keep``, with outputs pointing into ``study``."""
    steps = json.loads((study / "study.json").read_text())["steps"]
    return {k: {**v, "out": str(study / v["out"])} for k, v in steps.items() if k in keep}


def test_page_is_self_contained_and_labelled(report: Path):
    text = report.read_text()
    folder = report.with_suffix("")
    assert "SIMULATED DATA" in text
    assert "<script" not in text.lower()
    assert not re.search(r"(src|href)=\"(https?:|//|file:)", text)
    images = re.findall(r'<img src="([^"]+)" alt="[^"]*" data-file="([^"]+)">', text)
    assert len(images) >= 10
    for uri, name in images:
        assert uri.startswith("data:image/png;base64,")
        png = base64.b64decode(uri.split(",", 1)[1])
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        assert png == (folder / name).read_bytes()
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", text)
    assert len(captions) == len(images)
    assert all(c.startswith('<span class="sim">SIMULATED.</span>') for c in captions)
    for section in ("dataset", "encoding", "anchoring-base", "selectivity", "refinement"):
        assert f'<section id="{section}">' in text
    for section in ("probing", "anchoring-change", "truth"):
        assert f'<section id="{section}">' in text
    assert NOT_RUN not in text  # every step of the fixture ran
    for name in ("encoding_layers.parquet", "probe_comparison.parquet", "refine_curves.png"):
        assert (folder / name).is_file()


def test_reused_figures_are_the_steps_own(report: Path, study: Path):
    folder = report.with_suffix("")
    for name, source in (
        ("encode-base_sub-001_best_r.png", "encoding/base/maps/sub-001_best_r.png"),
        ("probe_comparison.png", "probe/comparison.png"),
        ("compare_parameter_change.png", "compare/parameter_change.png"),
        ("anchoring_change.png", "anchoring/refined/compare.png"),
    ):
        assert (folder / name).read_bytes() == (study / source).read_bytes()
    profile = pd.read_parquet(study / "anchoring/base/profile.parquet")
    assert (folder / "anchoring-base_profile.png").is_file() == bool(len(profile))


def test_headline_numbers_equal_the_tables(report: Path, study: Path):
    headline = dict(read_headline(report.with_suffix("")))
    page = page_numbers(report.read_text())
    assert mismatches(page, headline) == []
    manifest = json.loads((study / "dataset/wav2brain_prepare.json").read_text())
    runs = manifest["runs"].values()
    assert headline["dataset.subjects"] == len({r["subject"] for r in runs})
    assert headline["dataset.trs"] == sum(r["n_trs"] for r in runs)
    scores = pd.read_parquet(
        study / "encoding/base/scores.parquet", columns=["subject", "layer", "r"]
    )
    by_layer = scores.groupby(["layer", "subject"])["r"].mean().groupby("layer").mean()
    assert headline["encoding.best_layer_mean_r"] == pytest.approx(by_layer.max(), rel=1e-6)
    assert page["encoding.best_layer_mean_r"][1] == f"{by_layer.max():.3f}"
    comparison = pd.read_parquet(study / "probe/comparison.parquet")
    for row in comparison.itertuples():
        assert headline[f"probe.{row.task}.{row.metric}.{row.upstream_b}"] == row.b
        assert headline[f"probe.{row.task}.{row.metric}.{row.upstream_a}"] == row.a
    metrics = json.loads((study / "refine/metrics.json").read_text())
    assert headline["refine.stage2.mean_r"] == metrics["stage2"]["mean"]
    compare = json.loads((study / "compare/compare.json").read_text())
    assert (
        headline["compare.parameters_changed"] == compare["headline"]["parameters_changed"]["all"]
    )
    units = pd.read_parquet(study / "anchoring/base/units.parquet", columns=["layer", "unit"])
    assert headline["anchoring.base.ans"] == len(units.drop_duplicates())
    truth = json.loads((study / "truth/truth.json").read_text())
    assert headline["truth.passed"] is truth["passed"]
    for check in truth["checks"]:
        assert headline[f"truth.{check['name']}"] == check["value"]


def test_headline_check_catches_a_changed_number(report: Path):
    """Negative control: one number edited in the page, or one missing, is reported."""
    headline = dict(read_headline(report.with_suffix("")))
    text = report.read_text()
    value = json.dumps(headline["dataset.subjects"])
    edited = text.replace(
        f'data-key="dataset.subjects" data-value="{value}"',
        f'data-key="dataset.subjects" data-value="{json.dumps(headline["dataset.subjects"] + 1)}"',
    )
    assert edited != text
    assert mismatches(page_numbers(edited), headline) == ["dataset.subjects"]
    dropped = re.sub(r'<span data-key="dataset.trs"[^>]*>[^<]*</span>', "", text)
    assert mismatches(page_numbers(dropped), headline) == ["dataset.trs"]


def test_truth_rows_rendered(report: Path, study: Path):
    text = report.read_text()
    truth = json.loads((study / "truth/truth.json").read_text())
    for check in truth["checks"]:
        assert html.escape(check["description"], quote=True) in text
    assert '<span class="fail">FAIL</span>' in text
    table = pd.read_parquet(report.with_suffix("") / "truth_checks.parquet")
    assert list(table["name"]) == [c["name"] for c in truth["checks"]]


def test_missing_steps_say_not_run(study: Path, tmp_path: Path):
    run = tmp_path / "partial"
    run.mkdir()
    write_study(run, relative_steps(study, {"simulate", "prepare", "encode:base"}, run))
    text = build_report(run).read_text()
    for section in (
        "Anchoring (anchor:base)",
        "Selectivity (selectivity:base)",
        "Refinement (refine)",
        "Probing (probe)",
        "Anchoring of the refined model (anchor:refined)",
    ):
        assert f"{section}: {NOT_RUN}." in text
    assert "Ground truth: not checked" in text
    assert "Held-out Pearson r per layer" in text
    assert (run / "report" / "headline.json").is_file()


def test_real_study_has_no_banner_and_no_truth(study: Path, tmp_path: Path):
    run = tmp_path / "real"
    run.mkdir()
    write_study(run, relative_steps(study, {"probe"}, run), simulated=False)
    text = build_report(run).read_text()
    assert "SIMULATED" not in text
    assert 'id="truth"' not in text
    assert "Prepared dataset: not run in this study." in text


def test_a_half_finished_study_says_which_steps_are_still_to_run(study: Path, tmp_path: Path):
    run = tmp_path / "half"
    run.mkdir()
    path = write_study(run, relative_steps(study, {"probe"}, run), simulated=False)
    record = json.loads(path.read_text())
    record["planned"] = ["prepare", "extract:base", "probe", "report"]  # prepare not run yet
    path.write_text(json.dumps(record))
    text = build_report(run).read_text()
    assert "Prepared dataset: not run yet (a step of this study" in text
    assert "Selectivity (selectivity:base): not run in this study." in text  # not planned
    record["planned"] = ["no-such-step"]
    path.write_text(json.dumps(record))
    with pytest.raises(ValueError, match="field 'planned' must list step ids"):
        build_report(run)


def test_real_label_on_simulated_data_refused(study: Path, tmp_path: Path):
    run = tmp_path / "mislabelled"
    run.mkdir()
    write_study(run, relative_steps(study, {"prepare", "encode:base"}, run), simulated=False)
    with pytest.raises(ValueError, match="must be labelled SIMULATED"):
        build_report(run)


def test_missing_folder_names_step_and_folder(study: Path, tmp_path: Path):
    run = tmp_path / "missing"
    run.mkdir()
    steps = relative_steps(study, {"prepare"}, run)
    steps["anchor:base"] = {"step": "anchor", "command": [], "out": "anchoring/base"}
    write_study(run, steps)
    with pytest.raises(FileNotFoundError, match=r"step 'anchor:base'.*anchoring/base"):
        build_report(run)
    assert not (run / "report.html").exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "is not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"format": 2, "name": "x", "simulated": true, "config": {}, "steps": {}}', "'format'"),
        ('{"format": 1, "name": "x", "simulated": true, "config": {}}', "field 'steps'"),
        (
            '{"format": 1, "name": "x", "simulated": "yes", "config": {}, "steps": {}}',
            "'simulated'",
        ),
        (
            '{"format": 1, "name": "x", "simulated": true, "config": {}, "steps": {"encode": {}}}',
            "unknown steps",
        ),
        (
            '{"format": 1, "name": "x", "simulated": true, "config": {}, '
            '"steps": {"prepare": {"command": []}}}',
            "'out' string",
        ),
    ],
)
def test_malformed_study_json_names_the_file(tmp_path: Path, content: str, message: str):
    (tmp_path / "study.json").write_text(content)
    with pytest.raises(ValueError, match=message) as error:
        build_report(tmp_path)
    assert str(tmp_path / "study.json") in str(error.value)


def test_no_study_json(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="study.json not found"):
        build_report(tmp_path)


def test_failed_build_keeps_the_previous_report(study: Path, tmp_path: Path, monkeypatch):
    from wav2brain.reports import study_report

    run = tmp_path / "atomic"
    run.mkdir()
    write_study(run, relative_steps(study, {"simulate", "prepare"}, run))
    page = build_report(run)
    before = page.read_text()
    files = sorted(p.name for p in (run / "report").iterdir())

    def broken(builder):
        raise RuntimeError("interrupted")

    monkeypatch.setattr(study_report, "SECTIONS", (*study_report.SECTIONS, broken))
    with pytest.raises(RuntimeError, match="interrupted"):
        build_report(run)
    assert page.read_text() == before
    assert sorted(p.name for p in (run / "report").iterdir()) == files
    assert [p.name for p in run.iterdir() if "partial" in p.name] == []


def test_command_line(study: Path, tmp_path: Path, capsys):
    from wav2brain.cli import main

    run = tmp_path / "cli"
    run.mkdir()
    write_study(run, relative_steps(study, {"simulate", "prepare"}, run))
    out = tmp_path / "elsewhere" / "study.html"
    assert main(["report", str(run), "--out", str(out)]) == 0
    assert out.is_file() and (tmp_path / "elsewhere" / "study" / "headline.json").is_file()
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "study.yaml").write_text("name: t\n")  # the study file, not its run folder
    assert main(["report", str(tmp_path / "study.yaml")]) == 2
    assert "study.yaml is a file, not a run folder" in capsys.readouterr().err
    assert main(["report", str(run), "--out", str(tmp_path / "page.txt")]) == 2
    shutil.rmtree(run / "report", ignore_errors=True)


def test_group_anchoring_counted_where_it_anchors(study: Path, tmp_path: Path):
    """ANs whose group coupling passes FDR are counted per family and placed in their region."""
    anchoring = tmp_path / "anchoring"
    shutil.copytree(study / "anchoring/base", anchoring)
    group = pd.read_parquet(anchoring / "group.parquet")
    chosen = group.index[:3]
    group["roi_group_q"] = 0.5
    group.loc[chosen, "roi_group_q"] = 0.001
    group.to_parquet(anchoring / "group.parquet", index=False)
    run = tmp_path / "run"
    run.mkdir()
    steps = relative_steps(study, {"prepare"}, run)
    steps["anchor:base"] = {
        "step": "anchor",
        "command": ["wav2brain", "anchor"],
        "out": str(anchoring),
    }
    write_study(run, steps)
    page = build_report(run)
    headline = read_headline(run / "report")
    assert headline["anchoring.base.group_anchored.roi"] == 3
    where = pd.read_parquet(run / "report" / "anchoring-base_where.parquet")
    expected = group.loc[chosen].groupby(["roi", "layer"])["unit"].nunique()
    found = where[where["family"] == "roi"].set_index(["region", "layer"])["anchored_ans"]
    assert found.sort_index().to_dict() == expected.sort_index().to_dict()
    layers = pd.read_parquet(run / "report" / "anchoring-base_layers.parquet")
    assert layers["group_anchored_roi"].sum() == 3
    assert "Group level" in page.read_text()
    # the step's --alpha decides: at 1e-4 none of them passes
    steps["anchor:base"]["command"] = ["wav2brain", "anchor", "--alpha", "0.0001"]
    write_study(run, steps)
    build_report(run)
    assert read_headline(run / "report")["anchoring.base.group_anchored.roi"] == 0
