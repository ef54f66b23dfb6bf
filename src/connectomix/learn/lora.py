"""Low-rank adapters (LoRA) for the 3-D convolutions of the flood-filling networks.

LoRA (Hu et al., "LoRA: Low-rank adaptation of large language models", ICLR 2022) learns a low-rank weight
update instead of the weights themselves. For a ``nn.Conv3d`` with weight ``W`` of shape
``(out, in, kz, ky, kx)`` the adapter holds ``A`` of shape ``(rank, in·kz·ky·kx)`` and ``B`` of shape
``(out, rank)``; the adapted convolution is ``W + scaling · (B @ A)`` reshaped to the kernel shape, with
``scaling = alpha / rank``. It is computed as two convolutions beside the frozen base one::

    y = base(x) + scaling · conv_B(conv_A(dropout(x)))

``conv_A`` has the base kernel, stride, padding and dilation and ``rank`` output channels; ``conv_B`` is 1³.
``A`` starts Kaiming-uniform and ``B`` at zero, so an untrained adapter changes nothing. Tensors are
``(batch, channel, z, y, x)``, as everywhere in :mod:`connectomix.segment`.

Works on every ``nn.Conv3d`` of both FFN architectures (:class:`~connectomix.segment.models.ConvStack3D`,
:class:`~connectomix.segment.inception.InceptionFFN`) and under ``torch.autocast`` (bf16): both branches run
in the autocast dtype and the adapter parameters stay in the base weight's dtype (fp32 for training).

An adapter detached from its model (:class:`Adapter`) is a config, fp32 CPU tensors named
``"<module>.lora_A"`` / ``"<module>.lora_B"`` and free-form string metadata; :func:`save_adapter` writes it as
a small safetensors file (config, metadata and a sha256 of the tensors in the header), atomically.
:func:`fuse_adapters` combines several adapters into one whose weight delta is exactly their weighted sum.

Typical use::

    add_lora(model, LoRAConfig(rank=4, alpha=8.0, targets=("residual.*",)))
    optimizer = torch.optim.Adam(lora_parameters(model), lr=1e-3)
    ...                                   # train; base weights stay frozen
    save_adapter(extract_adapter(model, {"base_sha256": digest}), "adapter.safetensors")
    merge_lora(model)                     # fold the deltas into the base weights for inference
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn
from torch.nn import functional

from connectomix.errors import CorruptDataError, InputError, NotFoundError

#: safetensors header keys this module writes; user metadata may not use the prefix.
RESERVED_PREFIX = "connectomix_lora_"
CONFIG_KEY = "connectomix_lora_config"
FORMAT_KEY = "connectomix_lora_format"
CHECKSUM_KEY = "connectomix_lora_sha256"
FORMAT_VERSION = "1"
_A = "lora_A"
_B = "lora_B"
_FLAGS_ATTR = "_lora_requires_grad"


@dataclass(frozen=True)
class LoRAConfig:
    """Which ``nn.Conv3d`` layers to adapt and how.

    ``rank`` ≥ 1 is the rank of the update; ``alpha`` > 0 sets ``scaling = alpha / rank``; ``dropout`` in
    [0, 1) is applied to the adapter branch's input in training mode only; ``targets`` are module-name
    patterns (:func:`fnmatch.fnmatchcase`, e.g. ``"residual.*.conv_b"``) of the Conv3d layers to adapt, where
    ``()`` adapts every Conv3d.
    """

    rank: int = 4
    alpha: float = 8.0
    dropout: float = 0.0
    targets: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise InputError(f"LoRA rank must be an integer >= 1, got {self.rank!r}")
        alpha = float(self.alpha)
        if not math.isfinite(alpha) or alpha <= 0:
            raise InputError(f"LoRA alpha must be a finite number > 0, got {self.alpha!r}")
        dropout = float(self.dropout)
        if not 0.0 <= dropout < 1.0:
            raise InputError(f"LoRA dropout must be in [0, 1), got {self.dropout!r}")
        if isinstance(self.targets, str):
            raise InputError(f"LoRA targets must be a sequence of patterns, got the string {self.targets!r}")
        targets = tuple(self.targets)
        if not all(isinstance(t, str) and t for t in targets):
            raise InputError(f"LoRA targets must be non-empty module-name patterns, got {targets!r}")
        object.__setattr__(self, "alpha", alpha)
        object.__setattr__(self, "dropout", dropout)
        object.__setattr__(self, "targets", targets)

    @property
    def scaling(self) -> float:
        """``alpha / rank``: the factor on ``B @ A``."""
        return self.alpha / self.rank

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"rank", "alpha", "dropout", "targets": [...]}``."""
        return {
            "rank": self.rank,
            "alpha": self.alpha,
            "dropout": self.dropout,
            "targets": list(self.targets),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoRAConfig:
        """Inverse of :meth:`to_dict`; InputError on unknown or ill-typed fields."""
        if not isinstance(data, dict):
            raise InputError(f"a LoRA config must be a JSON object, got {type(data).__name__}")
        unknown = sorted(set(data) - {"rank", "alpha", "dropout", "targets"})
        if unknown:
            raise InputError(f"unknown LoRA config fields {unknown}: expected rank, alpha, dropout, targets")
        kwargs = dict(data)
        if "targets" in kwargs:
            if not isinstance(kwargs["targets"], list | tuple):
                raise InputError(f"LoRA targets must be a list of patterns, got {kwargs['targets']!r}")
            kwargs["targets"] = tuple(kwargs["targets"])
        return cls(**kwargs)


class LoRAConv3d(nn.Module):
    """A frozen ``nn.Conv3d`` (``.base``) plus a trainable low-rank update (``lora_A``, ``lora_B``).

    ``lora_A`` is ``(rank, in·kz·ky·kx)`` (Kaiming-uniform), ``lora_B`` is ``(out, rank)`` (zeros), both in
    the base weight's dtype and device. Input and output are ``(batch, channel, z, y, x)`` like the base conv.
    After :meth:`merge` the base weight holds ``W + delta`` and the forward pass is the base conv alone;
    :meth:`unmerge` puts back a saved copy of ``W`` (bit for bit).
    """

    _original_weight: torch.Tensor | None

    def __init__(self, base: nn.Conv3d, config: LoRAConfig, generator: torch.Generator | None = None) -> None:
        super().__init__()
        if not isinstance(base, nn.Conv3d):
            raise InputError(f"LoRAConv3d wraps an nn.Conv3d, got {type(base).__name__}")
        if base.groups != 1:
            raise InputError(f"LoRA supports Conv3d with groups=1 only, got groups={base.groups}")
        if base.padding_mode != "zeros":
            raise InputError(f"LoRA supports Conv3d with zero padding only, got {base.padding_mode!r}")
        self.base = base
        self.config = config
        self.rank = config.rank
        self.scaling = config.scaling
        self.kernel_shape: tuple[int, ...] = tuple(base.weight.shape)
        fan_in = math.prod(self.kernel_shape[1:])
        dtype, device = base.weight.dtype, base.weight.device
        self.lora_A = nn.Parameter(torch.empty(config.rank, fan_in, dtype=dtype, device=device))
        self.lora_B = nn.Parameter(torch.zeros(base.out_channels, config.rank, dtype=dtype, device=device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5), generator=generator)
        self.dropout: nn.Module = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.merged = False
        self.register_buffer("_original_weight", None, persistent=False)
        for parameter in base.parameters():
            parameter.requires_grad_(False)
        self.train(base.training)  # a new module is in training mode; follow the model's mode instead

    def extra_repr(self) -> str:
        return f"rank={self.rank}, scaling={self.scaling:g}, merged={self.merged}"

    def delta_weight(self) -> torch.Tensor:
        """``scaling · (B @ A)`` as a kernel ``(out, in, kz, ky, kx)``, fp32 (differentiable)."""
        delta = (self.lora_B.float() @ self.lora_A.float()) * self.scaling
        return delta.reshape(self.kernel_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if self.merged:
            return out
        base = self.base
        a = self.lora_A.reshape(self.rank, *self.kernel_shape[1:])
        h = functional.conv3d(self.dropout(x), a, None, base.stride, base.padding, base.dilation)
        h = functional.conv3d(h, self.lora_B.reshape(*self.lora_B.shape, 1, 1, 1))
        return out + h * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        """Add the delta to ``base.weight`` in place (no-op if already merged); keeps a copy of the weight."""
        if self.merged:
            return
        weight = self.base.weight
        self._original_weight = weight.detach().clone()
        weight.copy_((weight.float() + self.delta_weight()).to(weight.dtype))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Put the saved base weight back, bit for bit (a no-op if not merged)."""
        if not self.merged:
            return
        assert self._original_weight is not None
        self.base.weight.copy_(self._original_weight)
        self._original_weight = None
        self.merged = False


def _lora_modules(model: nn.Module) -> Iterator[tuple[str, LoRAConv3d]]:
    """``(name, module)`` of every LoRAConv3d in ``model``, sorted by name."""
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, LoRAConv3d)]
    return iter(sorted(found, key=lambda item: item[0]))


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def add_lora(model: nn.Module, config: LoRAConfig, *, seed: int = 0) -> list[str]:
    """Replace the Conv3d layers of ``model`` that match ``config.targets`` by :class:`LoRAConv3d`, in place.

    Freezes every parameter of ``model`` (the previous ``requires_grad`` flags are restored by
    :func:`remove_lora`); only the adapter parameters train. ``seed`` makes the ``A`` initialisation
    reproducible. Returns the adapted module names, sorted. InputError if the model is already adapted, if
    it has no Conv3d, or if a target pattern matches no Conv3d layer.
    """
    if not isinstance(config, LoRAConfig):
        raise InputError(f"add_lora needs a LoRAConfig, got {type(config).__name__}")
    adapted = [name for name, _ in _lora_modules(model)]
    if adapted:
        raise InputError(
            f"the model already has LoRA adapters ({len(adapted)} layers, e.g. {adapted[0]!r}): "
            "call remove_lora first"
        )
    convs = sorted(name for name, m in model.named_modules() if isinstance(m, nn.Conv3d) and name)
    if not convs:
        raise InputError(f"{type(model).__name__} has no Conv3d layers to adapt with LoRA")
    if config.targets:
        unmatched = [p for p in config.targets if not any(fnmatchcase(name, p) for name in convs)]
        if unmatched:
            raise InputError(
                f"LoRA target patterns {unmatched} match no Conv3d layer of {type(model).__name__} "
                f"(layers: {', '.join(convs[:8])}{', …' if len(convs) > 8 else ''})"
            )
        chosen = [name for name in convs if any(fnmatchcase(name, p) for p in config.targets)]
    else:
        chosen = convs
    setattr(model, _FLAGS_ATTR, {name: p.requires_grad for name, p in model.named_parameters()})
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    generator = torch.Generator().manual_seed(seed)
    for name in chosen:
        base = model.get_submodule(name)
        assert isinstance(base, nn.Conv3d)
        module = LoRAConv3d(base, config, generator=generator)
        _set_submodule(model, name, module)
    return chosen


def remove_lora(model: nn.Module) -> None:
    """Put the plain Conv3d layers back (with their unmerged base weights) and restore ``requires_grad``."""
    for name, module in list(_lora_modules(model)):
        module.unmerge()
        _set_submodule(model, name, module.base)
    flags: dict[str, bool] | None = getattr(model, _FLAGS_ATTR, None)
    if flags is not None:
        for name, parameter in model.named_parameters():
            if name in flags:
                parameter.requires_grad_(flags[name])
        delattr(model, _FLAGS_ATTR)


def merge_and_remove_lora(model: nn.Module) -> None:
    """Fold the deltas into the base weights and put plain Conv3d layers back (a model without adapters)."""
    for name, module in list(_lora_modules(model)):
        module.merge()
        module._original_weight = None
        module.merged = False
        _set_submodule(model, name, module.base)
    flags: dict[str, bool] | None = getattr(model, _FLAGS_ATTR, None)
    if flags is not None:
        for name, parameter in model.named_parameters():
            if name in flags:
                parameter.requires_grad_(flags[name])
        delattr(model, _FLAGS_ATTR)


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The adapter parameters (``lora_A``, ``lora_B`` of each adapted layer, by name): what to train."""
    return [p for _, module in _lora_modules(model) for p in (module.lora_A, module.lora_B)]


def merge_lora(model: nn.Module) -> None:
    """Merge every adapter into its base weight (see :meth:`LoRAConv3d.merge`)."""
    for _, module in _lora_modules(model):
        module.merge()


def unmerge_lora(model: nn.Module) -> None:
    """Undo :func:`merge_lora`: the base weights come back bit for bit."""
    for _, module in _lora_modules(model):
        module.unmerge()


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{"<module>.lora_A": A, "<module>.lora_B": B}`` for every adapted layer, as fp32 CPU copies."""
    state: dict[str, torch.Tensor] = {}
    for name, module in _lora_modules(model):
        state[f"{name}.{_A}"] = module.lora_A.detach().to("cpu", torch.float32).clone()
        state[f"{name}.{_B}"] = module.lora_B.detach().to("cpu", torch.float32).clone()
    return state


def load_adapter_state(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Copy adapter tensors (as from :func:`adapter_state`) into the model's adapted layers.

    InputError on missing or unexpected keys or a shape mismatch (nothing is changed then). Merged layers are
    unmerged, loaded and merged again.
    """
    modules = dict(_lora_modules(model))
    if not modules:
        raise InputError("the model has no LoRA adapters to load into: call add_lora first")
    expected = {f"{name}.{suffix}": m for name, m in modules.items() for suffix in (_A, _B)}
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing:
        raise InputError(f"adapter tensors missing for the model: {', '.join(missing[:6])}")
    if extra:
        raise InputError(f"adapter tensors the model does not have: {', '.join(extra[:6])}")
    for key, tensor in tensors.items():
        if not isinstance(tensor, torch.Tensor):
            raise InputError(f"adapter tensor {key} is a {type(tensor).__name__}, expected a torch.Tensor")
        target = getattr(expected[key], key.rpartition(".")[2])
        if tuple(tensor.shape) != tuple(target.shape):
            raise InputError(
                f"adapter tensor {key} has shape {tuple(tensor.shape)}, "
                f"the model expects {tuple(target.shape)}"
            )
    with torch.no_grad():
        for name, module in modules.items():
            merged = module.merged
            module.unmerge()
            module.lora_A.copy_(tensors[f"{name}.{_A}"])
            module.lora_B.copy_(tensors[f"{name}.{_B}"])
            if merged:
                module.merge()


@dataclass
class Adapter:
    """An adapter detached from any model: config, tensors (as :func:`adapter_state`), string metadata."""

    config: LoRAConfig
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str] = field(default_factory=dict)

    def module_names(self) -> list[str]:
        """The adapted module names, sorted (validates the tensors; InputError if inconsistent)."""
        return _check_tensors(self.tensors, self.config, "adapter")

    def delta(self, module: str) -> torch.Tensor:
        """``scaling · (B @ A)`` of one module, flat ``(out, in·kz·ky·kx)``, fp32."""
        try:
            a, b = self.tensors[f"{module}.{_A}"], self.tensors[f"{module}.{_B}"]
        except KeyError:
            raise InputError(f"the adapter has no module {module!r}") from None
        return (b.float() @ a.float()) * self.config.scaling

    def num_parameters(self) -> int:
        return sum(t.numel() for t in self.tensors.values())


def _check_tensors(tensors: dict[str, torch.Tensor], config: LoRAConfig, source: str) -> list[str]:
    """The module names of an adapter's tensors; InputError unless every module has a matching A/B pair."""
    modules: set[str] = set()
    for key in tensors:
        name, _, suffix = key.rpartition(".")
        if suffix not in (_A, _B) or not name:
            raise InputError(f"{source}: tensor name {key!r} is not '<module>.lora_A' or '<module>.lora_B'")
        modules.add(name)
    if not modules:
        raise InputError(f"{source}: the adapter has no tensors")
    for name in sorted(modules):
        a, b = tensors.get(f"{name}.{_A}"), tensors.get(f"{name}.{_B}")
        if a is None or b is None:
            raise InputError(f"{source}: module {name!r} lacks its {_A if a is None else _B} tensor")
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != config.rank or b.shape[1] != config.rank:
            raise InputError(
                f"{source}: module {name!r} has A {tuple(a.shape)} and B {tuple(b.shape)}, expected "
                f"(rank, fan_in) and (out, rank) with rank {config.rank}"
            )
    return sorted(modules)


def extract_adapter(model: nn.Module, metadata: dict[str, str] | None = None) -> Adapter:
    """The model's adapter as an :class:`Adapter` (fp32 CPU copies); InputError if it has none."""
    modules = list(_lora_modules(model))
    if not modules:
        raise InputError("the model has no LoRA adapters to extract: call add_lora first")
    configs = {m.config for _, m in modules}
    if len(configs) != 1:
        raise InputError("the model's LoRA layers have different configs; cannot extract one adapter")
    return Adapter(config=modules[0][1].config, tensors=adapter_state(model), metadata=dict(metadata or {}))


def apply_adapter(model: nn.Module, adapter: Adapter) -> None:
    """Give ``model`` the adapter's weights: adapts it with ``adapter.config`` first where needed.

    A model adapted with a different config is re-adapted (its previous adapter is dropped); whether the
    layers are merged is kept. InputError if the adapter's layers do not fit the model: a model without
    adapters is then left as it was; one that had a differently configured adapter is left without any.
    """
    adapter.module_names()
    modules = list(_lora_modules(model))
    merged = any(m.merged for _, m in modules)
    if modules and any(m.config != adapter.config for _, m in modules):
        remove_lora(model)
        modules = []
    if not modules:
        add_lora(model, adapter.config)
    try:
        load_adapter_state(model, adapter.tensors)
    except InputError:
        if not modules:
            remove_lora(model)  # leave the model as it was given
        raise
    if merged:
        merge_lora(model)


def _checksum(tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name]
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()


def save_adapter(adapter: Adapter, path: Path | str) -> Path:
    """Write ``adapter`` as a safetensors file (fp32 tensors; config, metadata, sha256 in the header).

    Atomic: written to a temporary name beside ``path`` and renamed, so a failure leaves any previous file
    intact and no partial file. InputError on inconsistent tensors or metadata that is not ``str → str`` or
    uses the reserved ``connectomix_lora_`` prefix.
    """
    path = Path(path)
    adapter.module_names()
    for key, value in adapter.metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise InputError(f"adapter metadata must map strings to strings, got {key!r}: {value!r}")
        if key.startswith(RESERVED_PREFIX):
            raise InputError(f"adapter metadata key {key!r} uses the reserved prefix {RESERVED_PREFIX!r}")
    tensors = {k: t.detach().to("cpu", torch.float32).contiguous() for k, t in adapter.tensors.items()}
    header = {
        **adapter.metadata,
        CONFIG_KEY: json.dumps(adapter.config.to_dict()),
        FORMAT_KEY: FORMAT_VERSION,
        CHECKSUM_KEY: _checksum(tensors),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file(tensors, str(tmp), metadata=header)
        tmp.replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return path


def load_adapter(path: Path | str) -> Adapter:
    """Read a file written by :func:`save_adapter`.

    NotFoundError if it does not exist; CorruptDataError if it is truncated or corrupt (unreadable header or
    data, or tensors that do not match the stored sha256); InputError if it is a readable safetensors file
    but not a LoRA adapter (e.g. a model file).
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"no such adapter file {str(path)!r} (expected a .safetensors written by cx)")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            header = dict(handle.metadata() or {})
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CorruptDataError(
            f"{path}: truncated or corrupt adapter file, not readable as safetensors ({exc})"
        ) from None
    if CONFIG_KEY not in header:
        raise InputError(
            f"{path}: safetensors file has no {CONFIG_KEY!r} metadata (not a LoRA adapter from cx)"
        )
    try:
        config = LoRAConfig.from_dict(json.loads(header.pop(CONFIG_KEY)))
    except (json.JSONDecodeError, TypeError, InputError) as exc:
        raise CorruptDataError(f"{path}: corrupt LoRA config in the file header ({exc})") from None
    header.pop(FORMAT_KEY, None)
    expected_sum = header.pop(CHECKSUM_KEY, None)
    tensors = {name: t.to(torch.float32) for name, t in tensors.items()}
    if expected_sum is not None and _checksum(tensors) != expected_sum:
        raise CorruptDataError(
            f"{path}: adapter tensors do not match the sha256 in the header (corrupt data)"
        )
    try:
        _check_tensors(tensors, config, str(path))
    except InputError as exc:
        raise CorruptDataError(str(exc)) from None
    return Adapter(config=config, tensors=tensors, metadata=header)


def fuse_adapters(
    adapters: Sequence[Adapter], weights: Sequence[float], metadata: dict[str, str] | None = None
) -> Adapter:
    """One adapter whose weight delta is exactly ``Σ_i weights[i] · delta_i`` for every module.

    ``A_f`` stacks the ``A_i`` (rows), ``B_f`` stacks ``weights[i] · scaling_i · B_i`` (columns), so
    ``rank_f = Σ rank_i`` and ``alpha_f = rank_f`` (scaling 1); dropout is 0 and ``targets`` lists the module
    names explicitly. InputError unless every adapter has the same modules with the same shapes and there is
    one finite weight per adapter.
    """
    adapters = list(adapters)
    weights = [float(w) for w in weights]
    if not adapters:
        raise InputError("fuse_adapters needs at least one adapter")
    if len(weights) != len(adapters):
        raise InputError(
            f"fuse_adapters needs one weight per adapter: {len(adapters)} adapters, {len(weights)} weights"
        )
    if not all(math.isfinite(w) for w in weights):
        raise InputError(f"fuse_adapters weights must be finite, got {weights}")
    names = adapters[0].module_names()
    for i, adapter in enumerate(adapters[1:], start=1):
        other = adapter.module_names()
        if other != names:
            only = sorted(set(names) ^ set(other))
            raise InputError(
                f"adapters 0 and {i} target different layers (differing: {', '.join(only[:6])}); "
                "fused adapters must adapt the same layers"
            )
        for name in names:
            for suffix, axis in ((_A, 1), (_B, 0)):
                mine, theirs = adapters[0].tensors[f"{name}.{suffix}"], adapter.tensors[f"{name}.{suffix}"]
                if mine.shape[axis] != theirs.shape[axis]:
                    raise InputError(
                        f"adapters 0 and {i} disagree on the kernel shape of {name!r}: {suffix} "
                        f"{tuple(mine.shape)} vs {tuple(theirs.shape)}"
                    )
    rank = sum(a.config.rank for a in adapters)
    tensors: dict[str, torch.Tensor] = {}
    for name in names:
        tensors[f"{name}.{_A}"] = torch.cat([a.tensors[f"{name}.{_A}"].float() for a in adapters], dim=0)
        tensors[f"{name}.{_B}"] = torch.cat(
            [
                w * a.config.scaling * a.tensors[f"{name}.{_B}"].float()
                for a, w in zip(adapters, weights, strict=True)
            ],
            dim=1,
        )
    config = LoRAConfig(rank=rank, alpha=float(rank), dropout=0.0, targets=tuple(names))
    return Adapter(config=config, tensors=tensors, metadata=dict(metadata or {}))
