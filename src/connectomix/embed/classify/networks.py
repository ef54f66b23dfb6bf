"""Torch modules of the embedding classifiers: a residual MLP and its SNGP variant.

- :class:`ResidualMLP`: input projection, ``depth`` blocks ``h ← h + dropout(relu(W h + b))``, linear head.
- :class:`SNGPNetwork` (Liu et al. 2020, "Simple and principled uncertainty estimation … distance
  awareness"): the same residual body with every hidden weight under a spectral-norm *bound*
  (:class:`BoundedSpectralNorm`, ``W ← W / max(1, σ(W)/c)``, so each block stays bi-Lipschitz), a fixed
  orthogonal input projection, and a random-Fourier-feature Gaussian-process output layer
  (:class:`RandomFeatureGP`) whose Laplace-approximated precision matrix gives a predictive variance per
  sample.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils import parametrize


class BoundedSpectralNorm(nn.Module):
    """Parametrization ``W ↦ W / max(1, σ(W) / bound)``: the spectral norm is capped at ``bound``.

    σ is estimated by power iteration like ``torch.nn.utils.parametrizations.spectral_norm`` (``u``, ``v``
    buffers updated in training mode only), which always rescales to σ = 1; SNGP needs the bound instead, so
    weights whose norm is already below ``bound`` are left alone.
    """

    _u: torch.Tensor
    _v: torch.Tensor

    def __init__(self, weight: torch.Tensor, bound: float, n_power_iterations: int = 1, eps: float = 1e-12):
        super().__init__()
        if bound <= 0:
            raise ValueError(f"spectral norm bound must be positive, got {bound}")
        self.bound = float(bound)
        self.n_power_iterations = int(n_power_iterations)
        self.eps = eps
        out_features, in_features = weight.shape
        u = nn.functional.normalize(weight.new_empty(out_features).normal_(), dim=0, eps=eps)
        v = nn.functional.normalize(weight.new_empty(in_features).normal_(), dim=0, eps=eps)
        self.register_buffer("_u", u)
        self.register_buffer("_v", v)
        with torch.no_grad():  # a few iterations so σ is sensible from the first step
            self._power_iteration(weight.detach(), 15)

    def _power_iteration(self, weight: torch.Tensor, n: int) -> None:
        for _ in range(n):
            self._v.copy_(nn.functional.normalize(weight.t() @ self._u, dim=0, eps=self.eps))
            self._u.copy_(nn.functional.normalize(weight @ self._v, dim=0, eps=self.eps))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if self.training and self.n_power_iterations > 0:
            with torch.no_grad():
                self._power_iteration(weight.detach(), self.n_power_iterations)
        u = self._u.clone(memory_format=torch.contiguous_format)
        v = self._v.clone(memory_format=torch.contiguous_format)
        sigma = torch.dot(u, weight @ v)
        return weight / torch.clamp(sigma / self.bound, min=1.0)


def bounded_linear(in_features: int, out_features: int, bound: float, n_power_iterations: int) -> nn.Linear:
    """A ``Linear`` whose weight carries a :class:`BoundedSpectralNorm` parametrization."""
    layer = nn.Linear(in_features, out_features)
    parametrize.register_parametrization(
        layer, "weight", BoundedSpectralNorm(layer.weight, bound, n_power_iterations)
    )
    return layer


class ResidualBody(nn.Module):
    """``depth`` residual blocks ``h ← h + dropout(relu(W h + b))`` of width ``hidden``."""

    def __init__(
        self, hidden: int, depth: int, dropout: float, bound: float | None = None, n_power_iterations: int = 1
    ):
        super().__init__()

        def make() -> nn.Linear:
            if bound is None:
                return nn.Linear(hidden, hidden)
            return bounded_linear(hidden, hidden, bound, n_power_iterations)

        self.layers = nn.ModuleList([make() for _ in range(depth)])
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            h = h + self.dropout(torch.relu(layer(h)))
        return h


class ResidualMLP(nn.Module):
    """Standardised (N, D) embeddings → (N, K) logits through a residual MLP."""

    def __init__(
        self, in_features: int, n_classes: int, hidden: int = 128, depth: int = 2, dropout: float = 0.1
    ):
        super().__init__()
        self.input = nn.Linear(in_features, hidden)
        self.body = ResidualBody(hidden, depth, dropout)
        self.head = nn.Linear(hidden, n_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits and no variance (the plain MLP has none)."""
        return self.head(self.body(self.input(x))), None


class RandomFeatureGP(nn.Module):
    """Gaussian-process output layer with random Fourier features and a Laplace posterior precision.

    Features ``φ(h) = sqrt(2/L) cos(W h / ℓ + b)`` with fixed ``W ~ N(0, I)``, ``b ~ U(0, 2π)``
    approximate an RBF kernel of length scale ℓ; logits are ``φ β``. The precision
    ``P = s·I + Σ_i p_i(1 − p_i) φ_i φ_iᵀ`` (``p_i`` the largest softmax probability, as edward2 does for
    several classes; ``s`` the ridge penalty) is accumulated over the batches passed to
    :meth:`accumulate_precision` — the last training epoch — and the predictive variance of a sample is
    ``s · φᵀ P⁻¹ φ``: near 0 close to the training data, near 1 (the prior) far from it.
    """

    length_scale: torch.Tensor
    rff_weight: torch.Tensor
    rff_bias: torch.Tensor
    precision: torch.Tensor
    covariance: torch.Tensor

    def __init__(
        self,
        in_features: int,
        n_classes: int,
        n_features: int = 1024,
        length_scale: float = 1.0,
        ridge: float = 1.0,
    ):
        super().__init__()
        self.n_features = n_features
        self.ridge = float(ridge)
        self.register_buffer("length_scale", torch.tensor(float(length_scale)))
        self.register_buffer("rff_weight", torch.randn(n_features, in_features))
        self.register_buffer("rff_bias", torch.rand(n_features) * (2 * math.pi))
        self.beta = nn.Linear(n_features, n_classes, bias=False)
        self.register_buffer("precision", torch.eye(n_features) * self.ridge)
        self.register_buffer("covariance", torch.eye(n_features) / self.ridge)

    def features(self, h: torch.Tensor) -> torch.Tensor:
        """(N, L) random Fourier features of hidden vectors (N, H)."""
        projected = nn.functional.linear(h / self.length_scale, self.rff_weight, self.rff_bias)
        return math.sqrt(2.0 / self.n_features) * torch.cos(projected)

    def reset_precision(self) -> None:
        """Start a new accumulation: ``P = s·I``."""
        self.precision.copy_(torch.eye(self.n_features, device=self.precision.device) * self.ridge)

    @torch.no_grad()
    def accumulate_precision(self, phi: torch.Tensor, logits: torch.Tensor) -> None:
        """Add one batch's ``Σ p(1 − p) φ φᵀ`` to the precision."""
        p = torch.softmax(logits.detach(), dim=1).max(dim=1).values
        weighted = phi.detach() * (p * (1 - p)).sqrt()[:, None]
        self.precision.add_(weighted.t() @ weighted)

    @torch.no_grad()
    def finalize_covariance(self) -> None:
        """``covariance = P⁻¹`` (Cholesky inverse), used by the variance from now on."""
        precision = self.precision.double()
        factor = torch.linalg.cholesky(precision)
        self.covariance.copy_(torch.cholesky_inverse(factor).to(self.covariance.dtype))

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits (N, K), predictive variance (N,) and features (N, L)."""
        phi = self.features(h)
        logits = self.beta(phi)
        variance = self.ridge * torch.sum((phi @ self.covariance) * phi, dim=1)
        return logits, variance.clamp(min=0.0), phi


class SNGPNetwork(nn.Module):
    """Spectral-normalised residual MLP with a random-feature GP output layer."""

    def __init__(
        self,
        in_features: int,
        n_classes: int,
        hidden: int = 128,
        depth: int = 2,
        dropout: float = 0.0,
        bound: float = 0.95,
        n_power_iterations: int = 1,
        n_random_features: int = 1024,
        length_scale: float = 1.0,
        ridge: float = 1.0,
    ):
        super().__init__()
        # A fixed (orthogonal) input projection keeps distances between inputs; trained, it could collapse
        # directions and lose the distance awareness the bounded body preserves.
        self.input = nn.Linear(in_features, hidden, bias=False)
        nn.init.orthogonal_(self.input.weight)
        self.input.weight.requires_grad_(False)
        self.body = ResidualBody(hidden, depth, dropout, bound, n_power_iterations)
        self.gp = RandomFeatureGP(hidden, n_classes, n_random_features, length_scale, ridge)

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """(N, hidden) representation fed to the GP layer."""
        return self.body(self.input(x))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (N, K) and predictive variance (N,)."""
        logits, variance, _ = self.gp(self.hidden(x))
        return logits, variance
