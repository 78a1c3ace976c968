"""BOLD read page by page from ``responses`` shards (``data.parquet_pages``, ``hf_layout.read_bold``)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from wav2brain.data import parquet_pages
from wav2brain.data.hf_layout import read_bold, response_table, write_shard
from wav2brain.data.parquet_pages import UnsupportedLayout, read_float32_row

META = dict(
    subject="01", session=None, task="t", run=None, stimulus_id="s", onset=0.0, tr=1.5,
    space="native", mask=None,
)  # fmt: skip
LEAF = "bold.list.element.list.element"


def runs(n_runs=3, n_trs=40, n_voxels=300, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((n_trs, n_voxels), dtype=np.float32) for _ in range(n_runs)]


def table(bolds):
    return pa.concat_tables([response_table(META, b, np.array([], int)) for b in bolds])


def test_a_prepared_shard_reads_exactly_and_into_the_given_buffer(tmp_path):
    (bold,) = runs(1, n_trs=120, n_voxels=5000)  # 2.4 MB: several 1-MB pages
    path = write_shard(table([bold]), tmp_path / "sub-01.parquet")
    out = np.full(bold.shape, np.nan, np.float32)
    assert read_bold(path, 0, bold.shape, out) is out
    np.testing.assert_array_equal(out, bold)
    np.testing.assert_array_equal(read_bold(path, 0, bold.shape), bold)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"row_group_size": 1},
        {"data_page_version": "2.0", "data_page_size": 5000},
        {"compression": "none", "data_page_size": 777},  # pages straddle rows
        {"compression": "gzip"},
        {"use_byte_stream_split": [LEAF], "data_page_size": 3000},
        {"use_byte_stream_split": [LEAF], "data_page_version": "2.0", "data_page_size": 3000},
    ],
)
def test_every_row_of_every_page_layout_reads_by_pages(tmp_path, options, monkeypatch):
    bolds = runs()
    path = tmp_path / "shard.parquet"
    pq.write_table(table(bolds), path, use_dictionary=False, **options)
    for row, bold in enumerate(bolds):
        out = read_float32_row(path, "bold", row, np.empty(bold.shape, np.float32))
        np.testing.assert_array_equal(out, bold)
    # read_bold takes the page reader, not pyarrow's decoding, for these layouts
    monkeypatch.setattr(pq, "read_table", None)
    np.testing.assert_array_equal(read_bold(path, 2, bolds[2].shape), bolds[2])


@pytest.mark.parametrize("layout", ["dictionary", "lz4", "ragged"])
def test_other_layouts_fall_back_to_pyarrow_with_the_same_values(tmp_path, layout):
    bolds = runs()
    path = tmp_path / "shard.parquet"
    if layout == "ragged":  # rows of different widths in one row group
        bolds[1] = bolds[1][:, :100]
        ragged = pa.array([b.tolist() for b in bolds], pa.list_(pa.list_(pa.float32())))
        pq.write_table(pa.table({"bold": ragged}), path, use_dictionary=False)
    else:
        options = {"compression": "lz4"} if layout == "lz4" else {"use_dictionary": True}
        pq.write_table(table(bolds), path, **options)
    with pytest.raises(UnsupportedLayout):
        for row, bold in enumerate(bolds):
            read_float32_row(path, "bold", row, np.empty(bold.shape, np.float32))
    for row, bold in enumerate(bolds):
        np.testing.assert_array_equal(read_bold(path, row, bold.shape), bold)


PEAK_CHILD = """
import sys, numpy as np, pyarrow.parquet as pq
from pathlib import Path
sys.path.insert(0, sys.argv[3])
from bench_prepare import current_rss_kb, peak_rss_kb, reset_peak_rss
from wav2brain.data.parquet_pages import read_float32_row
path, how = Path(sys.argv[1]), sys.argv[2]
out = np.ones((400, 10000), np.float32)  # touched: part of the baseline
assert reset_peak_rss()
base = current_rss_kb()
if how == "pages":
    read_float32_row(path, "bold", 0, out)
else:
    pq.read_table(path, columns=["bold"])
print((peak_rss_kb() - base) * 1024)
"""


def test_reading_holds_under_half_a_run_where_pyarrow_holds_several(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    (bold,) = runs(1, n_trs=400, n_voxels=10000)  # 16 MB, one Parquet page
    path = write_shard(table([bold]), tmp_path / "sub-01.parquet")
    benchmarks = str(Path(__file__).resolve().parents[1] / "benchmarks")
    env = {"MALLOC_MMAP_THRESHOLD_": str(2**20), "ARROW_DEFAULT_MEMORY_POOL": "system"}
    peaks = {}
    for how in ("pages", "pyarrow"):
        command = [sys.executable, "-c", PEAK_CHILD, str(path), how, benchmarks]
        result = subprocess.run(command, capture_output=True, text=True, env={**env, **_env()})
        assert result.returncode == 0, result.stderr
        peaks[how] = int(result.stdout.split()[-1])
    assert peaks["pages"] < 0.5 * bold.nbytes, peaks  # zstd window and 1-MB chunks
    # negative control: pyarrow's decoding of the same cell holds more than twice the run
    assert peaks["pyarrow"] > 2 * bold.nbytes, peaks


def _env() -> dict:
    import os

    return {k: v for k, v in os.environ.items() if k in ("PATH", "PYTHONPATH", "HOME")}


def test_a_truncated_shard_is_an_error_naming_the_file(tmp_path):
    (bold,) = runs(1, n_trs=120, n_voxels=5000)
    path = write_shard(table([bold]), tmp_path / "sub-01_task-a.parquet")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"sub-01_task-a\.parquet: not a readable Parquet file"):
        read_bold(path, 0, bold.shape)


def test_a_corrupted_page_is_an_error_naming_the_file(tmp_path):
    (bold,) = runs(1, n_trs=120, n_voxels=5000)
    path = write_shard(table([bold]), tmp_path / "sub-01_task-a.parquet")
    chunk = pq.ParquetFile(path).metadata.row_group(0).column(14)
    assert chunk.path_in_schema == LEAF
    data = bytearray(path.read_bytes())
    data[chunk.data_page_offset + 2 : chunk.data_page_offset + 8] = b"\xff" * 6  # page sizes
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"sub-01_task-a\.parquet.*(page|truncated|corrupted)"):
        read_bold(path, 0, bold.shape)


def test_a_mis_sized_row_is_an_error_naming_file_and_row(tmp_path):
    (bold,) = runs(1)
    path = write_shard(table([bold]), tmp_path / "sub-01_task-a.parquet")
    with pytest.raises(ValueError, match=r"sub-01_task-a\.parquet row 0: .*holds 12000 values"):
        read_bold(path, 0, (40, 301))
    with pytest.raises(ValueError, match="row 1 out of range"):
        read_bold(path, 1, bold.shape)
    with pytest.raises(ValueError, match="out must be C-contiguous float32"):
        read_bold(path, 0, bold.shape, np.empty(bold.shape, np.float64))


def test_the_fallback_checks_sizes_too(tmp_path, monkeypatch):
    (bold,) = runs(1)
    path = write_shard(table([bold]), tmp_path / "sub-01_task-a.parquet")

    def unsupported(*args, **kwargs):
        raise UnsupportedLayout("forced")

    monkeypatch.setattr(parquet_pages, "read_float32_row", unsupported)
    np.testing.assert_array_equal(read_bold(path, 0, bold.shape), bold)
    with pytest.raises(ValueError, match=r"sub-01_task-a\.parquet row 0: bold holds 12000"):
        read_bold(path, 0, (40, 299))


def test_a_truncated_shard_in_a_prepared_folder_is_named_before_any_bold_is_read(tmp_path):
    from wav2brain.encoding.runs import read_responses

    (bold,) = runs(1)
    (tmp_path / "README.md").write_text("# fixture\n")
    good = write_shard(table([bold]), tmp_path / "responses" / "sub-01_task-a.parquet")
    bad = write_shard(table([bold]), tmp_path / "responses" / "sub-02_task-a.parquet")
    assert len(read_responses(tmp_path)) == 2
    bad.write_bytes(bad.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"sub-02_task-a\.parquet: not a readable Parquet file"):
        read_responses(tmp_path)
    assert good.is_file()
