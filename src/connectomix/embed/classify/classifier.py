"""Classifiers on embeddings with a fit/predict API: residual MLP or SNGP, deterministic by seed.

>>> clf = EmbeddingClassifier(ClassifierConfig(kind="sngp", seed=0))      # doctest: +SKIP
>>> clf.fit(embeddings, labels)           # (N, D) float32, (N,) int     # doctest: +SKIP
>>> prediction = clf.predict(new_embeddings)                              # doctest: +SKIP
>>> prediction.labels, prediction.ood_score                               # doctest: +SKIP

Inputs are standardised with the training mean and standard deviation (stored with the model). Labels may
be any integers; they are mapped to class indices ``0..K-1`` (``classes``) and back. :meth:`save` writes
``model.safetensors`` (weights, standardisation, random features, GP covariance) and ``config.json`` into a
directory, atomically; :meth:`EmbeddingClassifier.load` restores an identical model.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from numpy.typing import NDArray
from safetensors.torch import load_file, save_file
from torch import nn

from connectomix.embed.classify.networks import ResidualMLP, SNGPNetwork
from connectomix.embed.classify.ood import (
    MEAN_FIELD_FACTOR,
    dempster_shafer_uncertainty,
    variance_adjusted_logits,
)
from connectomix.errors import CorruptDataError, InputError, NotFoundError

FORMAT_VERSION = 1


@dataclass(frozen=True)
class ClassifierConfig:
    """Hyper-parameters (all stored in ``config.json``).

    Attributes
    ----------
    kind
        ``"mlp"`` (residual MLP) or ``"sngp"`` (spectral-normalised body + random-feature GP output).
    hidden, depth
        Width and number of residual blocks.
    dropout
        Dropout in the residual blocks (SNGP defaults to none, so the precision is accumulated on the
        same features that predict).
    epochs, batch_size, learning_rate, weight_decay
        AdamW training on cross-entropy.
    seed
        Seeds weight initialisation, random features, dropout and batch order.
    spectral_norm_bound
        SNGP: cap ``c`` on each hidden weight's spectral norm.
    n_random_features, length_scale, ridge
        SNGP: random Fourier features ``L``, RBF length scale in standardised units (None: the median
        distance between training samples' hidden vectors at initialisation) and ridge penalty ``s``.
    mean_field_factor
        SNGP: λ in ``logit / sqrt(1 + λ·var)`` (π/8).
    """

    kind: Literal["mlp", "sngp"] = "sngp"
    hidden: int = 128
    depth: int = 2
    dropout: float | None = None
    epochs: int = 40
    batch_size: int = 64
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0
    spectral_norm_bound: float = 0.95
    n_power_iterations: int = 1
    n_random_features: int = 1024
    length_scale: float | None = None
    ridge: float = 1.0
    mean_field_factor: float = MEAN_FIELD_FACTOR

    def __post_init__(self) -> None:
        if self.kind not in ("mlp", "sngp"):
            raise InputError(f"classifier kind must be 'mlp' or 'sngp', got {self.kind!r}")
        for name in ("hidden", "depth", "epochs", "batch_size", "n_random_features"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < (0 if name == "depth" else 1):
                raise InputError(f"{name} must be a positive integer, got {value!r}")
        if self.dropout is not None and not 0 <= self.dropout < 1:
            raise InputError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def dropout_rate(self) -> float:
        """Dropout in force: 0.1 for the MLP and 0 for SNGP unless set."""
        if self.dropout is not None:
            return self.dropout
        return 0.1 if self.kind == "mlp" else 0.0


@dataclass(frozen=True)
class Prediction:
    """Predictions for N samples over K classes.

    Attributes
    ----------
    classes
        (K,) the original label of each class index.
    logits
        (N, K) raw logits.
    variance
        (N,) SNGP predictive variance (zeros for the MLP).
    adjusted_logits
        (N, K) ``logits / sqrt(1 + λ·variance)``.
    probabilities
        (N, K) softmax of the adjusted logits.
    ood_score
        (N,) Dempster–Shafer uncertainty ``K / (K + Σ exp(adjusted logits))``; higher = less like the
        training data.
    """

    classes: NDArray[np.int64]
    logits: NDArray[np.float64]
    variance: NDArray[np.float64]
    adjusted_logits: NDArray[np.float64]
    probabilities: NDArray[np.float64]
    ood_score: NDArray[np.float64]
    class_index: NDArray[np.int64] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "class_index", self.probabilities.argmax(axis=1).astype(np.int64))

    @property
    def labels(self) -> NDArray[np.int64]:
        """(N,) predicted labels (original label values)."""
        return self.classes[self.class_index]

    @property
    def confidence(self) -> NDArray[np.float64]:
        """(N,) largest class probability."""
        return self.probabilities.max(axis=1)


def _check_inputs(embeddings: Any, dim: int | None = None) -> NDArray[np.float32]:
    x = np.asarray(embeddings, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] == 0:
        raise InputError(f"embeddings must have shape (N, D) with N ≥ 1, got {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise InputError(f"embeddings must have {dim} columns like the training data, got {x.shape[1]}")
    if not np.all(np.isfinite(x)):
        raise InputError("embeddings must be finite")
    return x


class EmbeddingClassifier:
    """A residual-MLP or SNGP classifier on (N, D) embeddings; see the module docstring."""

    def __init__(self, config: ClassifierConfig | None = None) -> None:
        self.config = config or ClassifierConfig()
        self.network: ResidualMLP | SNGPNetwork | None = None
        self.classes: NDArray[np.int64] | None = None
        self.mean: NDArray[np.float32] | None = None
        self.scale: NDArray[np.float32] | None = None
        self.history: list[float] = []

    # -- construction --------------------------------------------------------------------------------
    def _build(self, dim: int, n_classes: int, length_scale: float) -> ResidualMLP | SNGPNetwork:
        c = self.config
        if c.kind == "mlp":
            return ResidualMLP(dim, n_classes, c.hidden, c.depth, c.dropout_rate)
        return SNGPNetwork(
            dim,
            n_classes,
            c.hidden,
            c.depth,
            c.dropout_rate,
            c.spectral_norm_bound,
            c.n_power_iterations,
            c.n_random_features,
            length_scale,
            c.ridge,
        )

    def _standardise(self, x: NDArray[np.float32]) -> torch.Tensor:
        assert self.mean is not None and self.scale is not None
        return torch.from_numpy((x - self.mean) / self.scale)

    # -- training ------------------------------------------------------------------------------------
    def fit(self, embeddings: Any, labels: Any) -> EmbeddingClassifier:
        """Train on (N, D) float32 embeddings and (N,) integer labels; same inputs + seed → same model."""
        x = _check_inputs(embeddings)
        y_raw = np.asarray(labels)
        if y_raw.shape != (len(x),) or not np.issubdtype(y_raw.dtype, np.integer):
            raise InputError(f"labels must be ({len(x)},) integers, got {y_raw.dtype} {y_raw.shape}")
        classes, y = np.unique(y_raw, return_inverse=True)
        if len(classes) < 2:
            raise InputError(f"training needs at least 2 classes, got {len(classes)}")
        self.classes = classes.astype(np.int64)
        self.mean = x.mean(axis=0)
        self.scale = np.maximum(x.std(axis=0), 1e-6).astype(np.float32)
        inputs = self._standardise(x)
        targets = torch.from_numpy(y.astype(np.int64))
        c = self.config
        rng = np.random.default_rng(c.seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(c.seed)
            length_scale = c.length_scale or 1.0
            self.network = network = self._build(x.shape[1], len(classes), length_scale)
            if isinstance(network, SNGPNetwork) and c.length_scale is None:
                network.gp.length_scale.fill_(self._median_distance(network, inputs, rng))
            optimizer = torch.optim.AdamW(
                [p for p in network.parameters() if p.requires_grad],
                lr=c.learning_rate,
                weight_decay=c.weight_decay,
            )
            self.history = []
            network.train()
            for epoch in range(c.epochs):
                last = epoch == c.epochs - 1
                if isinstance(network, SNGPNetwork) and last:
                    network.gp.reset_precision()
                order = torch.from_numpy(rng.permutation(len(x)))
                total = 0.0
                for start in range(0, len(x), c.batch_size):
                    index = order[start : start + c.batch_size]
                    if isinstance(network, SNGPNetwork):
                        logits, _, phi = network.gp(network.hidden(inputs[index]))
                        if last:
                            network.gp.accumulate_precision(phi, logits)
                    else:
                        logits, _ = network(inputs[index])
                    loss = nn.functional.cross_entropy(logits, targets[index])
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    total += float(loss.detach()) * len(index)
                self.history.append(total / len(x))
            if isinstance(network, SNGPNetwork):
                network.gp.finalize_covariance()
            network.eval()
        return self

    @staticmethod
    def _median_distance(network: SNGPNetwork, inputs: torch.Tensor, rng: np.random.Generator) -> float:
        """Median distance between the hidden vectors of random pairs of training samples."""
        n = len(inputs)
        a, b = rng.integers(0, n, size=(2, min(2048, n * n)))
        keep = a != b
        with torch.no_grad():
            hidden = network.hidden(inputs)
            distance = torch.linalg.norm(hidden[a[keep]] - hidden[b[keep]], dim=1)
        value = float(distance.median()) if keep.any() else 1.0
        return value if value > 0 else 1.0

    # -- inference -----------------------------------------------------------------------------------
    def _require_fitted(self) -> ResidualMLP | SNGPNetwork:
        if self.network is None or self.classes is None:
            raise InputError("the classifier is not trained: call fit() or load() first")
        return self.network

    def predict(self, embeddings: Any, batch_size: int = 8192) -> Prediction:
        """Labels, probabilities, SNGP variance and OOD scores for (N, D) embeddings."""
        network = self._require_fitted()
        assert self.mean is not None and self.classes is not None
        x = _check_inputs(embeddings, len(self.mean))
        logits_parts, variance_parts = [], []
        network.eval()
        with torch.no_grad():
            for start in range(0, len(x), batch_size):
                logits, variance = network(self._standardise(x[start : start + batch_size]))
                logits_parts.append(logits.double().numpy())
                variance_parts.append(
                    np.zeros(len(logits)) if variance is None else variance.double().numpy()
                )
        logits = np.concatenate(logits_parts)
        variance = np.concatenate(variance_parts)
        adjusted = variance_adjusted_logits(logits, variance, self.config.mean_field_factor)
        shifted = np.exp(adjusted - adjusted.max(axis=1, keepdims=True))
        probabilities = shifted / shifted.sum(axis=1, keepdims=True)
        return Prediction(
            self.classes, logits, variance, adjusted, probabilities, dempster_shafer_uncertainty(adjusted)
        )

    def predict_labels(self, embeddings: Any) -> NDArray[np.int64]:
        """(N,) predicted labels."""
        return self.predict(embeddings).labels

    # -- persistence ---------------------------------------------------------------------------------
    def save(self, directory: str | Path, overwrite: bool = False) -> Path:
        """Write ``model.safetensors`` and ``config.json`` into ``directory`` (atomic: staged, renamed)."""
        network = self._require_fitted()
        assert self.mean is not None and self.scale is not None and self.classes is not None
        directory = Path(directory)
        if directory.exists() and not overwrite:
            raise InputError(f"{directory} already exists; pass overwrite to replace it")
        staging = directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        tensors = {f"network.{k}": v.detach().contiguous() for k, v in network.state_dict().items()}
        tensors["standardise.mean"] = torch.from_numpy(self.mean.copy())
        tensors["standardise.scale"] = torch.from_numpy(self.scale.copy())
        save_file(tensors, str(staging / "model.safetensors"))
        payload = {
            "format": "connectomix.embed.classifier",
            "version": FORMAT_VERSION,
            "config": asdict(self.config),
            "classes": [int(v) for v in self.classes],
            "input_dim": len(self.mean),
            "history": self.history,
        }
        (staging / "config.json").write_text(json.dumps(payload, indent=2) + "\n")
        if directory.exists():
            shutil.rmtree(directory)
        staging.replace(directory)
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> EmbeddingClassifier:
        """A classifier saved by :meth:`save`."""
        directory = Path(directory)
        config_path, weights_path = directory / "config.json", directory / "model.safetensors"
        if not config_path.is_file() or not weights_path.is_file():
            raise NotFoundError(
                f"{directory} is not a saved classifier (needs config.json and model.safetensors)"
            )
        try:
            payload = json.loads(config_path.read_text())
            known = {f.name for f in fields(ClassifierConfig)}
            config = ClassifierConfig(**{k: v for k, v in payload["config"].items() if k in known})
            classes = np.array(payload["classes"], dtype=np.int64)
            dim = int(payload["input_dim"])
            tensors = load_file(str(weights_path))
        except (ValueError, KeyError, TypeError, OSError) as exc:
            raise CorruptDataError(f"{directory}: cannot read the saved classifier ({exc})") from None
        clf = cls(config)
        clf.classes = classes
        clf.mean = tensors.pop("standardise.mean").numpy()
        clf.scale = tensors.pop("standardise.scale").numpy()
        clf.history = list(payload.get("history", []))
        network = clf._build(dim, len(classes), config.length_scale or 1.0)
        state = {k.removeprefix("network."): v for k, v in tensors.items()}
        try:
            network.load_state_dict(state)
        except RuntimeError as exc:
            raise CorruptDataError(f"{directory}: weights do not match config.json ({exc})") from None
        network.eval()
        clf.network = network
        return clf
