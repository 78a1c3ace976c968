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
- :class:`CTCModel` (PR, ASR): weighted sum, then a linear CTC head (PR's default, as SUPERB) or a
  projection + BiLSTM + linear head (ASR's default, as SUPERB), blank index 0, greedy decoding.
- :class:`SpeakerEmbedder` (ASV): weighted sum, mean pooling, linear embedding trained through a
  linear speaker classifier on the training speakers (cross-entropy); trials are scored by the
  cosine of the embeddings. SUPERB's x-vector downstream is heavier; this one keeps training in
  seconds and still ranks upstreams by how much speaker identity their layers carry.

Each task's hyperparameters come from :class:`DownstreamConfig` (SUPERB's recipe of each task,
scaled to the offline tasks, in :data:`TASK_DEFAULTS`). Training uses Adam for a fixed number of
epochs and keeps the epoch with the best validation score (model selection on the validation
split, as SUPERB's ``dev-best`` checkpoints); one seed fixes the initialisation and the batch
order.
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
    """Frame-level CTC downstream (the type's default: :data:`TASK_DEFAULTS` has PR's and ASR's).

    ``head`` ``"bilstm"`` (projection to ``projector_dim``, ``num_layers`` bidirectional LSTM layers
    of ``hidden_size`` per direction, linear output; SUPERB's ASR uses 2 x 1024) or ``"linear"``
    (SUPERB's PR head). ``dropout`` after the LSTM. ``max_grad_norm`` clips the gradient norm
    (s3prl: 1).
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
        if not 0 <= self.dropout < 1:
            raise ValueError(f"CTCConfig.dropout must be in [0, 1), got {self.dropout}")


@dataclass(frozen=True)
class VerificationConfig:
    """Speaker-verification downstream: embedding size and speaker-classification training."""

    embedding_dim: int = 128
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    epochs: int = 40
    batch_size: int = 32
    max_validation_trials: int = 20_000


PartConfig = UtteranceConfig | CTCConfig | VerificationConfig
PART_TYPES: dict[str, type] = {
    "utterance": UtteranceConfig,
    "ctc": CTCConfig,
    "verification": VerificationConfig,
}
"""The downstream configuration class of each task type."""

TASK_DEFAULTS: dict[str, PartConfig] = {
    "ks": UtteranceConfig(),
    "ic": UtteranceConfig(),
    "sid": UtteranceConfig(),
    "er": UtteranceConfig(),
    "pr": CTCConfig(head="linear", learning_rate=1e-2, epochs=40, batch_size=16, max_grad_norm=1.0),
    "asr": CTCConfig(
        head="bilstm",
        projector_dim=256,
        hidden_size=128,
        num_layers=1,
        dropout=0.2,
        learning_rate=2e-3,
        epochs=30,
        batch_size=16,
        max_grad_norm=1.0,
    ),
    "asv": VerificationConfig(),
}
"""The downstream of each SUPERB task, SUPERB's recipe scaled to the offline tasks (one place).

s3prl's recipes (``downstream/*/config.yaml``), for the record, and what we keep:

- KS, IC, SID (``speech_commands``, ``fluent_commands``, ``voxceleb1``): projection to 256,
  mean pooling, linear; Adam at 1e-4 for 200,000 steps. Ours: :class:`UtteranceConfig` (1e-3,
  40 epochs: the offline training splits hold hundreds of utterances, not tens of thousands).
- PR (``ctc/libriphone.yaml``): projection to 256 then a linear frame classifier (``FrameLevel``
  without hidden layers: a linear map), CTC; Adam at 1e-2, batch 16 x 2 accumulated, 100,000
  steps, gradient clipping 1. Ours: the linear head straight on the weighted sum (the same
  family of maps: the 256-wide factorisation is wider than the phoneme set), Adam at 1e-2,
  batch 16, clipping 1, 40 epochs: the default PR task's 200 training sentences make 13 steps
  an epoch, and with the tiny random upstream the validation PER stopped improving at epoch 36
  of 60 (test PER 0.81 over 3 seeds, against 0.78 for the 1 x 128 BiLSTM head that PR had
  before, which cost about 20 times the CPU time: 5.4 s against about 115 s a seed); 3e-2
  peaked at epoch 14 with a worse test PER (0.83). At the ``small`` size (3 steps an
  epoch) the head is still improving at epoch 40: pass more epochs (``pr.epochs``) there when
  the score matters more than the seconds.
- ASR (``asr/config.yaml``): projection to 1024, 2 bidirectional LSTM layers of 1024, dropout
  0.2, character CTC; Adam at 1e-4, batch 32, 200,000 steps, clipping 1, SpecAugment. Ours: a
  projection to 256 and one bidirectional LSTM layer of 128, dropout 0.2, Adam at 2e-3, batch
  16, 30 epochs, clipping 1, no SpecAugment: the offline ASR set has about 110 words and 200
  training sentences, where SUPERB's 4 x 1024 LSTM state would only overfit, and its CPU cost
  per epoch grows with the square of the width.
- ASV (``sv_voxceleb1``): an x-vector model trained with AM-softmax. Ours:
  :class:`VerificationConfig` (a linear embedding trained through a speaker classifier;
  module docstring).
"""


def _check_positive(label: str, part: PartConfig) -> None:
    bad = {
        name: getattr(part, name)
        for name in ("epochs", "batch_size", "learning_rate")
        if not getattr(part, name) > 0
    }
    if bad:
        raise ValueError(f"{label} ({type(part).__name__}): {bad} must be positive")


@dataclass(frozen=True)
class DownstreamConfig:
    """All downstream hyperparameters: one configuration per task, and shared settings.

    The downstream of a task comes from, in this order: its entry in ``tasks``; the field of its
    type (``utterance``, ``ctc``, ``verification``) when given; its entry in
    :data:`TASK_DEFAULTS`; the type's class with its defaults (:meth:`for_task`). So
    ``DownstreamConfig()`` trains SUPERB's downstream of each task (a linear CTC head for PR, a
    BiLSTM for ASR), ``DownstreamConfig(ctc=CTCConfig(head="linear"))`` one head for every CTC
    task, and ``DownstreamConfig(tasks={"asr": CTCConfig(...)})`` changes ASR alone.
    :meth:`with_changes` and :meth:`with_options` change fields over a type or one task while
    keeping every other default (what ``wav2brain probe --epochs / --ctc-head / --downstream``
    do).

    ``standardize``: per-layer standardisation with training-split statistics (module docstring).
    ``device``: where the downstream trains (the features come from the cache).
    """

    utterance: UtteranceConfig | None = None
    ctc: CTCConfig | None = None
    verification: VerificationConfig | None = None
    tasks: dict[str, PartConfig] = field(default_factory=dict)
    standardize: bool = True
    device: str = "cpu"

    def __post_init__(self) -> None:
        for task_type, cls in PART_TYPES.items():
            part = getattr(self, task_type)
            if part is not None and not isinstance(part, cls):
                raise ValueError(
                    f"DownstreamConfig.{task_type} must be a {cls.__name__}, got "
                    f"{type(part).__name__}"
                )
            if part is not None:
                _check_positive(f"DownstreamConfig.{task_type}", part)
        for name, part in self.tasks.items():
            if not isinstance(part, tuple(PART_TYPES.values())):
                raise ValueError(
                    f"DownstreamConfig.tasks[{name!r}] must be one of "
                    f"{', '.join(c.__name__ for c in PART_TYPES.values())}, got {type(part).__name__}"
                )
            known = TASK_DEFAULTS.get(name)
            if known is not None and type(part) is not type(known):
                raise ValueError(
                    f"DownstreamConfig.tasks[{name!r}] is a {type(part).__name__}; task {name!r} "
                    f"takes a {type(known).__name__}"
                )
            _check_positive(f"DownstreamConfig.tasks[{name!r}]", part)

    def for_task(self, name: str, task_type: str) -> PartConfig:
        """The downstream configuration of task ``name`` of type ``task_type`` (class docstring).

        Raises
        ------
        ValueError
            For an unknown type, or an entry of ``tasks`` of another type than ``task_type``.
        """
        if task_type not in PART_TYPES:
            raise ValueError(f"unknown task type {task_type!r}; expected one of {list(PART_TYPES)}")
        cls = PART_TYPES[task_type]
        part = self.tasks.get(name)
        if part is None:
            part = getattr(self, task_type)
        if part is None:
            part = TASK_DEFAULTS.get(name)
            if part is not None and not isinstance(part, cls):
                part = None  # a custom task reusing a SUPERB name with another type
        part = cls() if part is None else part
        if not isinstance(part, cls):
            raise ValueError(
                f"task {name!r} is of type {task_type!r} but DownstreamConfig.tasks[{name!r}] is a "
                f"{type(part).__name__}, not a {cls.__name__}"
            )
        return part

    def with_changes(self, target: str, **changes: object) -> DownstreamConfig:
        """A copy with ``changes`` to the fields of a task type or of one task.

        Parameters
        ----------
        target
            A task type (``utterance``, ``ctc``, ``verification``: its field and every task of
            that type in ``tasks`` and :data:`TASK_DEFAULTS` change, other fields of each task
            keep their values) or a task name (of ``tasks`` or :data:`TASK_DEFAULTS`).
        changes
            Field names of the target's configuration class and their new values.

        Raises
        ------
        ValueError
            Naming an unknown target or field.
        """
        from dataclasses import replace

        cls = self._target_class(target)
        allowed = _field_names(cls)
        if unknown := sorted(set(changes) - set(allowed)):
            raise ValueError(
                f"downstream {target!r}: {cls.__name__} has no field {unknown}; fields: "
                f"{', '.join(allowed)}"
            )
        task_type = next(t for t, c in PART_TYPES.items() if c is cls)
        if target in PART_TYPES:
            names = [n for n, p in {**TASK_DEFAULTS, **self.tasks}.items() if isinstance(p, cls)]
        else:
            names = [target]
        tasks = dict(self.tasks)
        for name in names:
            tasks[name] = replace(self.for_task(name, task_type), **changes)
        update: dict[str, object] = {"tasks": tasks}
        if target in PART_TYPES:
            update[target] = replace(getattr(self, target) or cls(), **changes)
        return replace(self, **update)

    def with_options(self, options: Sequence[str]) -> DownstreamConfig:
        """Apply ``TARGET.FIELD=VALUE`` strings in order (:meth:`with_changes`; the CLI's form).

        ``TARGET`` is a task type or a task name; ``VALUE`` is read as the field's type (int,
        float, str; ``true`` / ``false`` for bool): ``ctc.head=linear``, ``asr.hidden_size=256``,
        ``pr.epochs=80``.

        Raises
        ------
        ValueError
            Naming the option: no ``=`` or ``.``, unknown target or field, a value of the wrong
            type (e.g. ``epochs=2.5``), or one the configuration refuses.
        """
        config = self
        for option in options:
            key, sep, text = option.partition("=")
            target, dot, name = key.strip().rpartition(".")
            if not sep or not dot or not target or not name:
                raise ValueError(f"downstream option {option!r}: expected TARGET.FIELD=VALUE")
            try:
                cls = config._target_class(target)
                if name not in _field_names(cls):
                    raise ValueError(
                        f"{cls.__name__} has no field {name!r}; fields: "
                        f"{', '.join(_field_names(cls))}"
                    )
                value = _parse_value(text.strip(), type(getattr(cls(), name)))
                config = config.with_changes(target, **{name: value})
            except ValueError as error:
                raise ValueError(f"downstream option {option!r}: {error}") from error
        return config

    def _target_class(self, target: str) -> type:
        """The configuration class of a task type or task name (ValueError when unknown)."""
        if target in PART_TYPES:
            return PART_TYPES[target]
        part = self.tasks.get(target) or TASK_DEFAULTS.get(target)
        if part is None:
            raise ValueError(
                f"unknown downstream target {target!r}: give a task type ({', '.join(PART_TYPES)}) "
                f"or a task ({', '.join(sorted({*TASK_DEFAULTS, *self.tasks}))})"
            )
        return type(part)


def _field_names(cls: type) -> list[str]:
    from dataclasses import fields

    return [f.name for f in fields(cls)]


def _parse_value(text: str, kind: type) -> object:
    """``text`` as a value of ``kind`` (bool, int, float or str)."""
    if kind is bool:
        if text.lower() not in ("true", "false"):
            raise ValueError(f"expected true or false, got {text!r}")
        return text.lower() == "true"
    if kind is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"expected an integer, got {text!r}") from None
    if kind is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"expected a number, got {text!r}") from None
    return text


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
    part: UtteranceConfig,
    seed: int,
    *,
    standardize: bool = True,
    device: str = "cpu",
) -> tuple[float, np.ndarray, list[float]]:
    """Train an :class:`UtteranceClassifier`; return test accuracy, layer weights, validation history.

    ``features[split]`` are per-layer means ``[rows, layers, dim]`` (memory maps are read a batch
    at a time); ``labels[split]`` strings among ``classes``. ``standardize`` and ``device``: see
    :class:`DownstreamConfig`.
    """
    from wav2brain.probing.metrics import accuracy

    train = _rows(features["train"], device)
    y = {s: _indices(v, classes).to(device) for s, v in labels.items()}
    torch.manual_seed(seed)
    model = UtteranceClassifier(
        make_mix(features["train"], standardize), features["train"].shape[-1], len(classes), part
    ).to(device)

    def predict(split: str) -> np.ndarray:
        logits = _in_batches(model, features[split], device, 4 * part.batch_size)
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
    part: VerificationConfig,
    seed: int,
    *,
    standardize: bool = True,
    device: str = "cpu",
) -> tuple[float, np.ndarray, list[float]]:
    """Train a :class:`SpeakerEmbedder` on the training speakers; return the test EER.

    Validation selects the epoch with the lowest EER on ``trials["validation"]``.
    """
    from wav2brain.probing.metrics import equal_error_rate

    train = _rows(features["train"], device)
    y = _indices(speakers, classes).to(device)
    torch.manual_seed(seed)
    model = SpeakerEmbedder(
        make_mix(features["train"], standardize), features["train"].shape[-1], len(classes), part
    ).to(device)

    def eer(split: str) -> float:
        enrol, test, target = trials[split]
        embeddings = _in_batches(model.embed, features[split], device, 4 * part.batch_size)
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
    part: CTCConfig,
    seed: int,
    *,
    standardize: bool = True,
    device: str = "cpu",
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
    lookup = {unit: k + 1 for k, unit in enumerate(vocabulary)}
    targets = {
        s: [torch.tensor([lookup[u] for u in row]) for row in rows] for s, rows in units.items()
    }
    torch.manual_seed(seed)
    model = CTCModel(
        make_mix(frames["train"], standardize), frames["train"].shape[-1], len(vocabulary), part
    ).to(device)
    loss_fn = nn.CTCLoss(blank=0, zero_infinity=False)

    def batch(split: str, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        spans = [frames[split][offsets[split][i] : offsets[split][i + 1]] for i in rows]
        lengths = torch.tensor([len(span) for span in spans])
        return _dense(np.concatenate(spans)).to(device), lengths

    def batch_loss(rows: np.ndarray) -> torch.Tensor:
        x, lengths = batch("train", rows)
        log_probs = model(x, lengths)
        wanted = [targets["train"][i] for i in rows]
        return loss_fn(
            log_probs.transpose(0, 1),
            torch.cat(wanted).to(device),
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
