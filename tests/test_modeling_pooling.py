"""TR pooling: frames land in the right TR bin, exactly, for TRs of 1.5, 1.52 and 2.0 s."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch
from transformers import Wav2Vec2Config

from wav2brain.modeling.tr_pooling import receptive_field, tr_bin_weights

RATE = 16000
HISTORY = 6


def brute_force_bins(length: int, tr: float, history: int) -> list[int | None]:
    """Bin of each frame of an example of ``length`` samples, in exact rational arithmetic.

    Frame i spans samples [320 i, 320 i + 400); it belongs to bin k when its centre 320 i + 200 lies
    in [end - (H - k) T, end - (H - k - 1) T) with T = tr * 16000 samples and end = length.
    """
    tr_samples = Fraction(str(tr)) * RATE
    bins: list[int | None] = []
    index = 0
    while 320 * index + 400 <= length:
        centre = 320 * index + 200
        found = None
        for k in range(history):
            if (
                length - (history - k) * tr_samples
                <= centre
                < length - (history - k - 1) * tr_samples
            ):
                found = k
        bins.append(found)
        index += 1
    return bins


def test_receptive_field_of_wav2vec2():
    config = Wav2Vec2Config()
    assert receptive_field(config.conv_kernel, config.conv_stride) == (320, 400)
    assert receptive_field([3, 3], [2, 2]) == (4, 7)


def test_frame_existence_matches_transformers_frame_count(tiny_kwargs):
    from wav2brain import Wav2Vec2BrainEncodingConfig, Wav2Vec2ForBrainEncoding

    model = Wav2Vec2ForBrainEncoding(Wav2Vec2BrainEncodingConfig(num_voxels=2, **tiny_kwargs))
    lengths = torch.tensor([400, 719, 720, 24000, 24399, 144000, 150001])
    expected = model._get_feat_extract_output_lengths(lengths)
    n_frames = int(expected.max())
    # with a window longer than the audio every existing frame falls in some bin
    weights, _ = tr_bin_weights(
        lengths,
        n_frames,
        tr=10.0,
        history_trs=1,
        sampling_rate=RATE,
        frame_stride=320,
        frame_field=400,
    )
    assert torch.equal((weights[:, 0] > 0).sum(dim=1), expected)


@pytest.mark.parametrize("tr", [1.5, 1.52, 2.0])
def test_bins_are_exact_to_the_frame(tr):
    window = int(HISTORY * tr * RATE)
    tr_samples = int(tr * RATE)
    lengths = [
        window,  # exactly the window
        window + 1,
        window - 1,
        window + 137,
        window + 199,  # bin edges 1 sample after frame centres
        window + 200,  # bin edges exactly on frame centres: the later bin takes the frame
        window + 201,
        window + 5 * 320 + 17,  # more audio than the window: old frames ignored
        tr_samples,  # one TR: five empty bins on the left
        tr_samples + 199,
        3 * tr_samples + 201,
        2 * tr_samples - 1,
    ]
    n_frames = (max(lengths) - 400) // 320 + 1
    weights, valid = tr_bin_weights(
        torch.tensor(lengths),
        n_frames,
        tr=tr,
        history_trs=HISTORY,
        sampling_rate=RATE,
        frame_stride=320,
        frame_field=400,
    )
    assert weights.shape == (len(lengths), HISTORY, n_frames)
    for row, length in enumerate(lengths):
        bins = brute_force_bins(length, tr, HISTORY)
        member = weights[row] > 0
        for frame in range(n_frames):
            expected = bins[frame] if frame < len(bins) else None
            got = member[:, frame].nonzero().flatten().tolist()
            assert got == ([] if expected is None else [expected]), (tr, length, frame)
        counts = [sum(b == k for b in bins) for k in range(HISTORY)]
        assert valid[row].tolist() == [c > 0 for c in counts]
        for k, count in enumerate(counts):
            if count:
                assert torch.allclose(weights[row, k][member[k]], torch.tensor(1.0 / count))
    # a one-TR example is left-padded: only the most recent bin holds frames
    assert valid[lengths.index(tr_samples)].tolist() == [False] * (HISTORY - 1) + [True]


def test_bin_boundaries_split_frames_by_centre():
    # a 1 s TR = 16000 samples = 50 frames; the boundary at sample 16000 of a 32000-sample example
    # puts frame 49 (centre 15880) in bin 0 and frame 50 (centre 16200) in bin 1
    weights, valid = tr_bin_weights(
        torch.tensor([32000]),
        99,
        tr=1.0,
        history_trs=2,
        sampling_rate=RATE,
        frame_stride=320,
        frame_field=400,
    )
    member = weights[0] > 0
    assert member[0, 49] and not member[1, 49]
    assert member[1, 50] and not member[0, 50]
    assert member[0].sum() == 50 and member[1].sum() == 49  # the last frame needs 400 samples
    assert valid.all()
    # edges on centres (32200 samples: edges at 200, 16200, 32200): bins are half-open [start, end)
    weights, _ = tr_bin_weights(
        torch.tensor([32200]),
        100,
        tr=1.0,
        history_trs=2,
        sampling_rate=RATE,
        frame_stride=320,
        frame_field=400,
    )
    member = weights[0] > 0
    assert member[0, 0] and member[0, 49] and not member[0, 50]
    assert member[1, 50] and member[1, 99]
