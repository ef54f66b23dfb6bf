"""Google FFN TensorFlow checkpoints → :class:`~connectomix.segment.models.ConvStack3D` (and safetensors).

Google's ``convstack_3d`` builds its network under the variable scope ``seed_update``:
``conv0_a``, ``conv0_b``, then ``conv{i}_a`` / ``conv{i}_b`` for the residual modules i = 1 … depth − 1, then
``conv_lom``; each has ``weights`` and ``biases``. They map onto our module names as

=====================================  ==========================
``seed_update/conv0_a/weights``        ``conv0_a.weight``
``seed_update/conv{i}_b/biases``       ``residual.{i-1}.conv_b.bias``  (i ≥ 1)
``seed_update/conv_lom/weights``       ``conv_lom.weight``
=====================================  ==========================

TensorFlow's conv3d kernels are ``[kz, ky, kx, in, out]`` for ``(z, y, x)`` volumes (channels last); torch's
Conv3d wants ``[out, in, kz, ky, kx]``: the kernels are permuted with ``(4, 3, 0, 1, 2)``. Both frameworks
compute a cross-correlation, so no kernel flip is needed. The first layer's input channels are
``[image, seed]`` in both. Everything else in the checkpoint (``global_step``, optimizer slots such as
``…/weights/Adam``, counters) is ignored and listed in the summary.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from connectomix.errors import InputError
from connectomix.segment.models import ConvStack3D, FFNConfig, count_parameters, load_state, save_model
from connectomix.tfcheckpoint import TensorBundle

SCOPE = "seed_update"
TF_TO_TORCH_KERNEL = (4, 3, 0, 1, 2)  # [kz, ky, kx, in, out] → [out, in, kz, ky, kx]
_MODEL_VARIABLE = re.compile(rf"^{SCOPE}/conv(?:(\d+)_[ab]|_lom)/(?:weights|biases)$")


@dataclass
class ImportSummary:
    """What an import did: parameters and tensors loaded, checkpoint tensors ignored, where it was written."""

    source: str
    n_parameters: int
    n_tensors: int
    ignored: list[str] = field(default_factory=list)
    out_path: Path | None = None
    global_step: int | None = None


def tf_variable_names(config: FFNConfig) -> dict[str, str]:
    """``{tf variable name: our state_dict name}`` for a convstack of ``config.depth``."""
    layers = {"conv0_a": "conv0_a", "conv0_b": "conv0_b", "conv_lom": "conv_lom"}
    for i in range(1, config.depth):
        layers[f"conv{i}_a"] = f"residual.{i - 1}.conv_a"
        layers[f"conv{i}_b"] = f"residual.{i - 1}.conv_b"
    names = {}
    for tf_layer, ours in layers.items():
        names[f"{SCOPE}/{tf_layer}/weights"] = f"{ours}.weight"
        names[f"{SCOPE}/{tf_layer}/biases"] = f"{ours}.bias"
    return names


def _expected_tf_shape(torch_shape: tuple[int, ...]) -> tuple[int, ...]:
    if len(torch_shape) == 5:
        out, inp, kz, ky, kx = torch_shape
        return (kz, ky, kx, inp, out)
    return torch_shape


def _conv_range(indices: set[int]) -> str:
    return f"conv{min(indices)}…conv{max(indices)}" if indices else "no conv layers"


def read_tf_checkpoint(prefix: Path | str, config: FFNConfig) -> tuple[ConvStack3D, ImportSummary]:
    """Build a :class:`ConvStack3D` of ``config`` holding the weights of Google's FFN checkpoint ``prefix``
    (a prefix, ``.index`` or ``.data-…`` path), in eval mode, fp32, plus a summary of the import.

    Raises :class:`InputError` with a one-line message when the checkpoint does not fit ``config``: another
    architecture, depth or width, missing or mis-shaped tensors.
    """
    if config.arch != "convstack":
        raise InputError(
            f"Google FFN checkpoints hold convstack_3d models; the config asks for arch {config.arch!r}"
        )
    bundle = TensorBundle(prefix)
    source = str(bundle.prefix)
    wanted = tf_variable_names(config)
    model_vars = [n for n in bundle.names() if _MODEL_VARIABLE.match(n)]
    found_depth = {int(m.group(1)) for n in model_vars if (m := _MODEL_VARIABLE.match(n)) and m.group(1)}
    expected_depth = set(range(config.depth))
    if not model_vars:
        raise InputError(
            f"{source}: no {SCOPE}/conv*/weights tensors: not a Google FFN convstack_3d checkpoint "
            f"(it has {', '.join(bundle.names()[:4])}{' …' if len(bundle) > 4 else ''})"
        )
    if found_depth != expected_depth:
        raise InputError(
            f"{source}: checkpoint has {_conv_range(found_depth)} but depth {config.depth} expects "
            f"{_conv_range(expected_depth)}"
            + (f" (use depth {max(found_depth) + 1})" if found_depth == set(range(len(found_depth))) else "")
        )
    missing = sorted(name for name in wanted if name not in bundle)
    if missing:
        raise InputError(
            f"{source}: missing model tensors {', '.join(missing[:4])}{' …' * (len(missing) > 4)}"
        )

    model = ConvStack3D(config)
    expected = model.state_dict()
    state: dict[str, torch.Tensor] = {}
    for tf_name, ours in wanted.items():
        array = bundle.read(tf_name)
        want = _expected_tf_shape(tuple(expected[ours].shape))
        if array.shape != want:
            width = bundle.entry(f"{SCOPE}/conv0_a/biases").shape
            raise InputError(
                f"{source}: tensor {tf_name} has shape {array.shape}, width {config.width} expects {want} "
                f"(the checkpoint's conv0_a has {width[0] if width else '?'} features)"
            )
        if not np.issubdtype(array.dtype, np.floating):
            raise InputError(f"{source}: tensor {tf_name} has dtype {array.dtype}, expected floating point")
        tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
        if tensor.ndim == 5:
            tensor = tensor.permute(*TF_TO_TORCH_KERNEL).contiguous()
        state[ours] = tensor
    load_state(model, state, source=source)
    ignored = [name for name in bundle.names() if name not in wanted]
    step = None
    if "global_step" in bundle and bundle.entry("global_step").shape == ():
        step = int(bundle.read("global_step"))
    summary = ImportSummary(source, count_parameters(model), len(state), ignored, None, step)
    return model.eval(), summary


def import_tf_checkpoint(prefix: Path | str, config: FFNConfig) -> ConvStack3D:
    """The :class:`ConvStack3D` holding Google's FFN checkpoint ``prefix``; see :func:`read_tf_checkpoint`."""
    return read_tf_checkpoint(prefix, config)[0]


def import_tf_to_safetensors(prefix: Path | str, config: FFNConfig, out_path: Path | str) -> ImportSummary:
    """Import checkpoint ``prefix`` and write it with :func:`save_model` to ``out_path`` (atomically), with
    metadata naming the source checkpoint and its global step. Returns the summary (``out_path`` set)."""
    model, summary = read_tf_checkpoint(prefix, config)
    metadata = {"source_checkpoint": Path(summary.source).name, "source_format": "tensorflow-tensor-bundle"}
    if summary.global_step is not None:
        metadata["source_global_step"] = str(summary.global_step)
    summary.out_path = save_model(model, out_path, metadata=metadata)
    return summary
