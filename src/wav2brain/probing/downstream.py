"""Light downstream models over a frozen upstream's layers, SUPERB style, and their training.

Every model starts with :class:`WeightedLayerSum`: one learned weight per upstream layer,
softmaxed, initialised equal (zeros), as s3prl's ``Featurizer``. Before the sum, each layer's
features are standardised with the training split's per-layer mean and standard deviation
(``standardize=True``, an affine map, so it commutes with mean pooling and keeps the pooled cache
exact): layers of wav2vec2 differ in scale by orders of magnitude, and without it the softmax
weights measure scale as much as usefulness. s3prl has no such step by default; set
``standardize=False`` for its behaviour.

- :class:`UtteranceClassifier` (KS, IC, SID, ER): weighted sum, linear projection, mean pooling,
  linear classifier (s3prl's ``projector`` + ``UtteranceLevel`` with ``MeanPooling``); trained on
  per-layer means, which is exact because everything before the pooling is linear.
- :class:`CTCModel` (PR, ASR): weighted sum, then a linear CTC head or a projection + BiLSTM + linear
  head, blank index 0, greedy decoding.
- :class:`SpeakerEmbedder` (ASV): weighted sum, mean pooling, linear embedding trained through a
  linear speaker classifier on the training speakers (cross-entropy); trials are scored by the
  cosine of the embeddings. SUPERB's x-vector downstream is heavier; this one keeps training in
  seconds and still ranks upstreams by how much speaker identity their layers carry.

Training uses Adam for a fixed number of epochs and keeps the epoch with the best validation
score (model selection on the validation split, as SUPERB's ``dev-best`` checkpoints); one seed
fixes the initialisation and the batch order.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

CTC_HEADS = ("bilstm", "linear")


@dataclass(frozen=True)
class UtteranceConfig:
    """Utterance classification downstream (s3prl ``speech_commands`` defaults where sensible).

    ``projector_dim`` 256 as s3prl; ``learning_rate`` 1e-3 (s3prl uses 1e-4 over 200,000 steps;
    the offline tasks train in tens of epochs), ``epochs`` over the training split, ``batch_size``
    utterances.
    """

    projector_dim: int = 256
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    epochs: int = 40
    batch_size: int = 32


@dataclass(frozen=True)
class CTCConfig:
    """Frame-level CTC downstream.

    ``head`` ``"bilstm"`` (projection to ``projector_dim``, ``num_layers`` bidirectional LSTM layers
    of ``hidden_size`` per direction, linear output; SUPERB's ASR uses 2 x 1024) or ``"linear"``
    (SUPERB's PR head). ``dropout`` after the LSTM.
    """

    head: str = "bilstm"
    projector_dim: int = 256
    hidden_size: int = 128
    num_layers: int = 1
    dropout: float = 0.1
    learning_rate: float = 2e-3
    weight_decay: float = 0.0
    epochs: int = 30
    batch_size: int = 16
    max_grad_norm: float = 5.0

    def __post_init__(self) -> None:
        if self.head not in CTC_HEADS:
            raise ValueError(f"CTCConfig.head must be one of {CTC_HEADS}, got {self.head!r}")


@dataclass(frozen=True)
class VerificationConfig:
    """Speaker-verification downstream: embedding size and speaker-classification training."""

    embedding_dim: int = 128
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    epochs: int = 40
    batch_size: int = 32
    max_validation_trials: int = 20_000


@dataclass(frozen=True)
class DownstreamConfig:
    """All downstream hyperparameters (one per task type) and shared settings.

    ``standardize``: per-layer standardisation with training-split statistics (module docstring).
    ``device``: where the downstream trains (the features come from the cache).
    """

    utterance: UtteranceConfig = field(default_factory=UtteranceConfig)
    ctc: CTCConfig = field(default_factory=CTCConfig)
    verification: VerificationConfig = field(default_factory=VerificationConfig)
    standardize: bool = True
    device: str = "cpu"

    def __post_init__(self) -> None:
        for part in (self.utterance, self.ctc, self.verification):
            bad = {
                name: getattr(part, name)
                for name in ("epochs", "batch_size", "learning_rate")
                if not getattr(part, name) > 0
            }
            if bad:
                raise ValueError(f"{type(part).__name__}: {bad} must be positive")


class WeightedLayerSum(nn.Module):
    """Softmax-weighted sum over the layer axis of ``[..., layers, dim]`` (after standardising).

    Parameters
    ----------
    mean, std
        Per-layer statistics ``[layers, dim]`` (identity when None).
    """

    def __init__(
        self, n_layers: int, mean: torch.Tensor | None = None, std: torch.Tensor | None = None
    ):
        super().__init__()
        self.weights = nn.Parameter(torch.zeros(n_layers))
        self.register_buffer("mean", mean if mean is not None else torch.zeros(1))
        self.register_buffer("scale", 1.0 / std if std is not None else torch.ones(1))

    def layer_weights(self) -> np.ndarray:
        """The softmaxed weights ``[layers]`` (sum 1)."""
        return torch.softmax(self.weights.detach(), 0).cpu().numpy()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        features = (features - self.mean) * self.scale
        return torch.einsum("...lh,l->...h", features, torch.softmax(self.weights, 0))


class UtteranceClassifier(nn.Module):
    """Weighted sum, projection, mean pooling (done in the cache), linear classifier."""

    def __init__(self, mix: WeightedLayerSum, dim: int, n_classes: int, config: UtteranceConfig):
        super().__init__()
        self.mix = mix
        self.projector = nn.Linear(dim, config.projector_dim)
        self.classifier = nn.Linear(config.projector_dim, n_classes)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """Logits ``[batch, classes]`` from per-layer means ``[batch, layers, dim]``."""
        return self.classifier(self.projector(self.mix(pooled)))


class SpeakerEmbedder(nn.Module):
    """Weighted sum, mean pooling (in the cache), linear embedding; a speaker classifier trains it."""

    def __init__(
        self, mix: WeightedLayerSum, dim: int, n_speakers: int, config: VerificationConfig
    ):
        super().__init__()
        self.mix = mix
        self.embedding = nn.Linear(dim, config.embedding_dim)
        self.classifier = nn.Linear(config.embedding_dim, n_speakers)

    def embed(self, pooled: torch.Tensor) -> torch.Tensor:
        """Embeddings ``[batch, embedding_dim]``."""
        return self.embedding(self.mix(pooled))

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(pooled))


class CTCModel(nn.Module):
    """Weighted sum then a linear or BiLSTM CTC head; output ``vocab + 1`` classes (blank 0)."""

    def __init__(self, mix: WeightedLayerSum, dim: int, vocab_size: int, config: CTCConfig):
        super().__init__()
        self.mix = mix
        self.config = config
        if config.head == "linear":
            self.projector = None
            self.lstm = None
            self.output = nn.Linear(dim, vocab_size + 1)
        else:
            self.projector = nn.Linear(dim, config.projector_dim)
            self.lstm = nn.LSTM(
                config.projector_dim,
                config.hidden_size,
                num_layers=config.num_layers,
                batch_first=True,
                bidirectional=True,
            )
            self.dropout = nn.Dropout(config.dropout)
            self.output = nn.Linear(2 * config.hidden_size, vocab_size + 1)

    def forward(self, frames: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Log-probabilities ``[batch, time, classes]`` from concatenated frames ``[sum T, L, H]``."""
        mixed = self.mix(frames)
        rows = torch.split(mixed, lengths.tolist())
        padded = nn.utils.rnn.pad_sequence(rows, batch_first=True)
        if self.lstm is not None:
            packed = nn.utils.rnn.pack_padded_sequence(
                self.projector(padded), lengths.cpu(), batch_first=True, enforce_sorted=False
            )
            out, _ = self.lstm(packed)
            padded, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True)
            padded = self.dropout(padded)
        return torch.log_softmax(self.output(padded), dim=-1)


def greedy_decode(log_probs: torch.Tensor, lengths: torch.Tensor) -> list[list[int]]:
    """Best-path CTC decoding: argmax per frame, repeats collapsed, blanks (0) dropped."""
    best = log_probs.argmax(-1).cpu().numpy()
    decoded = []
    for row, length in zip(best, lengths.tolist(), strict=True):
        path = row[:length]
        keep = np.ones(len(path), bool)
        keep[1:] = path[1:] != path[:-1]
        decoded.append([int(k) for k in path[keep] if k != 0])
    return decoded


def layer_statistics(features: np.ndarray, rows: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-layer mean and standard deviation ``[layers, dim]`` over the first axis, in blocks."""
    total = np.zeros(features.shape[1:], np.float64)
    squares = np.zeros(features.shape[1:], np.float64)
    for first in range(0, len(features), rows):
        block = np.asarray(features[first : first + rows], dtype=np.float64)
        total += block.sum(0)
        squares += (block**2).sum(0)
    mean = total / len(features)
    std = np.sqrt(np.maximum(squares / len(features) - mean**2, 0)) + 1e-5
    return torch.from_numpy(mean.astype(np.float32)), torch.from_numpy(std.astype(np.float32))


def make_mix(train: np.ndarray, standardize: bool) -> WeightedLayerSum:
    """A :class:`WeightedLayerSum` for features ``[rows, layers, dim]`` of the training split."""
    if standardize:
        return WeightedLayerSum(train.shape[1], *layer_statistics(train))
    return WeightedLayerSum(train.shape[1])


def fit(
    model: nn.Module,
    n_rows: int,
    batch_loss: Callable[[np.ndarray], torch.Tensor],
    validate: Callable[[], float],
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    weight_decay: float,
    seed: int,
    max_grad_norm: float | None = None,
) -> tuple[nn.Module, list[float]]:
    """Train ``model`` with Adam; keep the state of the epoch with the best ``validate()``.

    Parameters
    ----------
    batch_loss
        Loss of a batch given its row indices (into the training split).
    validate
        Validation score, higher is better (called after every epoch, model in eval mode).
    seed
        Seeds the batch order (the initialisation is seeded by the caller).

    Returns
    -------
    model, history
        The best model (eval mode) and the validation score of every epoch.
    """
    generator = np.random.default_rng(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate, weight_decay=weight_decay)
    best, best_state, history = -math.inf, copy.deepcopy(model.state_dict()), []
    for _ in range(epochs):
        model.train()
        order = generator.permutation(n_rows)
        for first in range(0, n_rows, batch_size):
            loss = batch_loss(np.sort(order[first : first + batch_size]))
            optimizer.zero_grad()
            loss.backward()
            if max_grad_norm is not None:
                nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
            optimizer.step()
        model.eval()
        with torch.no_grad():
            score = float(validate())
        history.append(score)
        if score > best:
            best, best_state = score, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    model.eval()
    return model, history


def cosine_scores(
    embeddings: torch.Tensor, enrol: Sequence[int] | np.ndarray, test: Sequence[int] | np.ndarray
) -> np.ndarray:
    """Cosine similarity of the embeddings of each trial's enrolment and test utterances."""
    unit = nn.functional.normalize(embeddings, dim=-1)
    enrol_t = torch.as_tensor(np.asarray(enrol), dtype=torch.long)
    test_t = torch.as_tensor(np.asarray(test), dtype=torch.long)
    return (unit[enrol_t] * unit[test_t]).sum(-1).cpu().numpy().astype(np.float64)


def _indices(values: Sequence[str], classes: Sequence[str]) -> torch.Tensor:
    lookup = {name: k for k, name in enumerate(classes)}
    return torch.tensor([lookup[v] for v in values], dtype=torch.long)


def _dense(features: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(features, dtype=np.float32))


def _rows(features: np.ndarray, device: str) -> Callable[[np.ndarray], torch.Tensor]:
    """Rows of a (memory-mapped) array as float32 tensors on ``device``, read when asked."""
    return lambda index: _dense(features[index]).to(device)


def _in_batches(
    function: Callable[[torch.Tensor], torch.Tensor], features: np.ndarray, device: str, size: int
) -> torch.Tensor:
    """``function`` over all rows of ``features``, ``size`` rows at a time, concatenated."""
    read = _rows(features, device)
    return torch.cat(
        [
            function(read(np.arange(i, min(i + size, len(features)))))
            for i in range(0, len(features), size)
        ]
    )


def train_utterance(
    features: Mapping[str, np.ndarray],
    labels: Mapping[str, Sequence[str]],
    classes: Sequence[str],
    config: DownstreamConfig,
    seed: int,
) -> tuple[float, np.ndarray, list[float]]:
    """Train an :class:`UtteranceClassifier`; return test accuracy, layer weights, validation history.

    ``features[split]`` are per-layer means ``[rows, layers, dim]`` (memory maps are read a batch
    at a time); ``labels[split]`` strings among ``classes``.
    """
    from wav2brain.probing.metrics import accuracy

    part = config.utterance
    train = _rows(features["train"], config.device)
    y = {s: _indices(v, classes).to(config.device) for s, v in labels.items()}
    torch.manual_seed(seed)
    model = UtteranceClassifier(
        make_mix(features["train"], config.standardize),
        features["train"].shape[-1],
        len(classes),
        part,
    ).to(config.device)

    def predict(split: str) -> np.ndarray:
        logits = _in_batches(model, features[split], config.device, 4 * part.batch_size)
        return logits.argmax(-1).cpu().numpy()

    model, history = fit(
        model,
        len(y["train"]),
        lambda idx: nn.functional.cross_entropy(model(train(idx)), y["train"][idx]),
        lambda: accuracy(y["validation"].cpu().numpy(), predict("validation")),
        epochs=part.epochs,
        batch_size=part.batch_size,
        learning_rate=part.learning_rate,
        weight_decay=part.weight_decay,
        seed=seed,
    )
    with torch.no_grad():
        score = accuracy(y["test"].cpu().numpy(), predict("test"))
    return score, model.mix.layer_weights(), history


def train_verification(
    features: Mapping[str, np.ndarray],
    speakers: Sequence[str],
    classes: Sequence[str],
    trials: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
    config: DownstreamConfig,
    seed: int,
) -> tuple[float, np.ndarray, list[float]]:
    """Train a :class:`SpeakerEmbedder` on the training speakers; return the test EER.

    Validation selects the epoch with the lowest EER on ``trials["validation"]``.
    """
    from wav2brain.probing.metrics import equal_error_rate

    part = config.verification
    train = _rows(features["train"], config.device)
    y = _indices(speakers, classes).to(config.device)
    torch.manual_seed(seed)
    model = SpeakerEmbedder(
        make_mix(features["train"], config.standardize),
        features["train"].shape[-1],
        len(classes),
        part,
    ).to(config.device)

    def eer(split: str) -> float:
        enrol, test, target = trials[split]
        embeddings = _in_batches(model.embed, features[split], config.device, 4 * part.batch_size)
        return equal_error_rate(target, cosine_scores(embeddings, enrol, test))

    model, history = fit(
        model,
        len(y),
        lambda idx: nn.functional.cross_entropy(model(train(idx)), y[idx]),
        lambda: -eer("validation"),
        epochs=part.epochs,
        batch_size=part.batch_size,
        learning_rate=part.learning_rate,
        weight_decay=part.weight_decay,
        seed=seed,
    )
    with torch.no_grad():
        score = eer("test")
    return score, model.mix.layer_weights(), [-h for h in history]


def train_ctc(
    frames: Mapping[str, np.ndarray],
    offsets: Mapping[str, np.ndarray],
    units: Mapping[str, Sequence[Sequence[str]]],
    vocabulary: Sequence[str],
    score: Callable[[str, list[list[str]]], float],
    config: DownstreamConfig,
    seed: int,
) -> tuple[float, np.ndarray, list[float]]:
    """Train a :class:`CTCModel`; return the test error rate, layer weights, validation history.

    Parameters
    ----------
    frames, offsets
        Per split, concatenated frames ``[total, layers, dim]`` and row offsets ``[rows + 1]``.
    units
        Per split, each row's target units (phonemes or characters).
    score
        Error rate of decoded units of a split (lower is better).
    """
    part = config.ctc
    lookup = {unit: k + 1 for k, unit in enumerate(vocabulary)}
    targets = {
        s: [torch.tensor([lookup[u] for u in row]) for row in rows] for s, rows in units.items()
    }
    torch.manual_seed(seed)
    model = CTCModel(
        make_mix(frames["train"], config.standardize),
        frames["train"].shape[-1],
        len(vocabulary),
        part,
    ).to(config.device)
    loss_fn = nn.CTCLoss(blank=0, zero_infinity=False)

    def batch(split: str, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        spans = [frames[split][offsets[split][i] : offsets[split][i + 1]] for i in rows]
        lengths = torch.tensor([len(span) for span in spans])
        return _dense(np.concatenate(spans)).to(config.device), lengths

    def batch_loss(rows: np.ndarray) -> torch.Tensor:
        x, lengths = batch("train", rows)
        log_probs = model(x, lengths)
        wanted = [targets["train"][i] for i in rows]
        return loss_fn(
            log_probs.transpose(0, 1),
            torch.cat(wanted).to(config.device),
            lengths,
            torch.tensor([len(t) for t in wanted]),
        )

    def decode(split: str) -> list[list[str]]:
        decoded: list[list[str]] = []
        n_rows = len(offsets[split]) - 1
        for first in range(0, n_rows, part.batch_size):
            x, lengths = batch(split, np.arange(first, min(first + part.batch_size, n_rows)))
            decoded += [
                [vocabulary[k - 1] for k in path]
                for path in greedy_decode(model(x, lengths), lengths)
            ]
        return decoded

    model, history = fit(
        model,
        len(offsets["train"]) - 1,
        batch_loss,
        lambda: -score("validation", decode("validation")),
        epochs=part.epochs,
        batch_size=part.batch_size,
        learning_rate=part.learning_rate,
        weight_decay=part.weight_decay,
        seed=seed,
        max_grad_norm=part.max_grad_norm,
    )
    with torch.no_grad():
        result = score("test", decode("test"))
    return result, model.mix.layer_weights(), [-h for h in history]
