"""SegCLR TensorFlow 1 checkpoints ↔ :class:`~connectomix.embed.model.SegCLREncoder`, without TensorFlow.

Google's legacy SegCLR graph (``LegacySegClrModel``) builds the encoder under ``base_model_0``, the embedding
head under ``bottleneck_head_0`` and the projection head under ``projection_head_0_0``, with ``tf.layers``
convolutions (``kernel``, ``bias``), Keras BatchNormalization layers (``gamma``, ``beta``, ``moving_mean``,
``moving_variance``) and ``tf.layers.dense`` layers without bias. The variable names this module reads and
writes, with ``B = base_model_0/resnet18``, stage ``s`` = 0…3 (Google's ``stage_{s+2}``), block ``k`` = 0, 1
(``block_a``, ``block_b``), conv ``j`` = 0, 1 and head layer ``i``:

==================================================================  ==========================================
``B/stage_1/conv1/{kernel,bias}``                                   ``backbone.stem.conv.{weight,bias}``
``B/stage_1/bn1/{gamma,beta,moving_mean,moving_variance}``          ``backbone.stem.bn.{weight,bias,``
                                                                    ``running_mean,running_var}``
``B/stage_{s+2}/block_{a,b}/conv_{j}/{kernel,bias}``                ``backbone.stages.{s}.{k}.conv_{j}.*``
``B/stage_{s+2}/block_{a,b}/bn_{j}/…``                              ``backbone.stages.{s}.{k}.bn_{j}.*``
``B/stage_{s+2}/block_a/shortcut_conv/{kernel,bias}``               ``backbone.stages.{s}.0.shortcut_conv.*``
``B/stage_{s+2}/block_a/shortcut_bn/…``                             ``backbone.stages.{s}.0.shortcut_bn.*``
``bottleneck_head_0/nl_{i}/dense/kernel``                           ``head.layers.{i}.dense.weight``
``bottleneck_head_0/nl_{i}/nl_{i}_bn/…``                            ``head.layers.{i}.bn.*``
``projection_head_0_0/nl_{i}/…`` (the same)                         ``projection.layers.{i}.*``
==================================================================  ==========================================

Layouts. Google feeds cutouts as ``(x, y, z)`` and its conv kernels are ``[k_x, k_y, k_z, in, out]``
(channels last); our tensors are ``(z, y, x)`` and torch kernels ``[out, in, k_z, k_y, k_x]``: kernels are
transposed with ``(4, 3, 2, 1, 0)``, which both reorders the spatial axes (x, y, z → z, y, x; a transpose,
not a flip) and moves the channels. This is the one place where SegCLR's (x, y, z) cutout order meets
connectomix's (z, y, x) arrays: an imported model embeds a (z, y, x) cutout exactly as Google's graph
embeds the same tissue as an (x, y, z) array. Dense kernels ``[in, out]`` are transposed to torch's
``[out, in]``. TensorFlow's ``SAME`` padding depends only on each axis' size, so it commutes with the axis
order.

Ignored (and listed in the summary): batch-renormalisation state (``renorm_mean``, ``renorm_stddev``,
``renorm_mean_weight``, ``renorm_stddev_weight``: renorm only changes training), optimiser slots
(``…/Momentum``, ``…/Adam``, ``…/LARS…``), ``global_step`` (reported) and other counters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from connectomix.embed.model import EncoderConfig, SegCLREncoder, count_parameters, save_encoder
from connectomix.errors import InputError, UnsupportedError
from connectomix.tfcheckpoint import TensorBundle, write_tensor_bundle

BACKBONE = "base_model_0/resnet18"
HEAD = "bottleneck_head_0"
PROJECTION = "projection_head_0_0"
TF_TO_TORCH_KERNEL = (4, 3, 2, 1, 0)  # [k_x, k_y, k_z, in, out] → [out, in, k_z, k_y, k_x]; its own inverse
_BN = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}
_BLOCKS = ("a", "b")
_HEAD_LAYER = re.compile(r"^(bottleneck_head_0|projection_head_0_0)/nl_(\d+)/dense/kernel$")


@dataclass
class ImportSummary:
    """What an import did: the inferred config, tensors loaded and ignored, the projection head's source."""

    source: str
    config: EncoderConfig
    n_parameters: int
    n_tensors: int
    has_projection: bool
    ignored: list[str] = field(default_factory=list)
    global_step: int | None = None
    out_path: Path | None = None


def _conv(tf_scope: str, ours: str) -> dict[str, str]:
    return {f"{tf_scope}/kernel": f"{ours}.weight", f"{tf_scope}/bias": f"{ours}.bias"}


def _bn(tf_scope: str, ours: str) -> dict[str, str]:
    return {f"{tf_scope}/{tf}": f"{ours}.{name}" for tf, name in _BN.items()}


def _head(scope: str, ours: str, layers: int) -> dict[str, str]:
    names = {}
    for i in range(layers):
        names[f"{scope}/nl_{i}/dense/kernel"] = f"{ours}.layers.{i}.dense.weight"
        names.update(_bn(f"{scope}/nl_{i}/nl_{i}_bn", f"{ours}.layers.{i}.bn"))
    return names


def tf_variable_names(config: EncoderConfig, projection: bool = True) -> dict[str, str]:
    """``{TensorFlow variable name: our state_dict name}`` for an encoder of ``config`` (see the module
    docstring); without the projection head when ``projection`` is false."""
    names = _conv(f"{BACKBONE}/stage_1/conv1", "backbone.stem.conv")
    names.update(_bn(f"{BACKBONE}/stage_1/bn1", "backbone.stem.bn"))
    for s in range(4):
        for k, letter in enumerate(_BLOCKS):
            tf_block, block = f"{BACKBONE}/stage_{s + 2}/block_{letter}", f"backbone.stages.{s}.{k}"
            for j in range(2):
                names.update(_conv(f"{tf_block}/conv_{j}", f"{block}.conv_{j}"))
                names.update(_bn(f"{tf_block}/bn_{j}", f"{block}.bn_{j}"))
            if k == 0:
                names.update(_conv(f"{tf_block}/shortcut_conv", f"{block}.shortcut_conv"))
                names.update(_bn(f"{tf_block}/shortcut_bn", f"{block}.shortcut_bn"))
    names.update(_head(HEAD, "head", config.head_layers))
    if projection:
        names.update(_head(PROJECTION, "projection", config.projection_layers))
    return names


def _to_torch(array: np.ndarray) -> torch.Tensor:
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    if tensor.ndim == 5:
        return tensor.permute(*TF_TO_TORCH_KERNEL).contiguous()
    if tensor.ndim == 2:
        return tensor.T.contiguous()
    return tensor


def _to_tf(tensor: torch.Tensor) -> np.ndarray:
    array = tensor.detach().to("cpu", torch.float32)
    if array.ndim == 5:
        array = array.permute(*TF_TO_TORCH_KERNEL)
    elif array.ndim == 2:
        array = array.T
    return np.ascontiguousarray(array.numpy())


def infer_config(bundle: TensorBundle, base: EncoderConfig | None = None) -> EncoderConfig:
    """The :class:`EncoderConfig` a checkpoint holds: input channels, widths, head depths and output sizes
    from the tensor shapes; input size, downsampling and channel names from ``base`` (default: the full
    preset, 129³, with ``masked_em`` for a one-channel model)."""
    source = str(bundle.prefix)
    stem = f"{BACKBONE}/stage_1/conv1/kernel"
    if stem not in bundle:
        some = ", ".join(bundle.names()[:4])
        raise InputError(
            f"{source}: no {stem}: not a SegCLR (legacy TF1 ResNet-18) checkpoint (it has {some} …)"
        )
    kernel = bundle.entry(stem).shape
    if len(kernel) != 5 or kernel[:3] != (7, 7, 7):
        raise InputError(f"{source}: {stem} has shape {kernel}, expected [7, 7, 7, in, out]")
    widths = []
    for s in range(4):
        name = f"{BACKBONE}/stage_{s + 2}/block_a/conv_0/kernel"
        if name not in bundle:
            raise InputError(f"{source}: missing {name}: expected four ResNet-18 stages (stage_2 … stage_5)")
        widths.append(int(bundle.entry(name).shape[-1]))
    if widths[0] != kernel[4]:
        raise UnsupportedError(
            f"{source}: the stem has {kernel[4]} channels but stage 2 has {widths[0]}; connectomix's encoder "
            "uses one width for both"
        )
    layers: dict[str, list[tuple[int, tuple[int, ...]]]] = {HEAD: [], PROJECTION: []}
    for name in bundle.names():
        if match := _HEAD_LAYER.match(name):
            layers[match.group(1)].append((int(match.group(2)), bundle.entry(name).shape))
        if name.endswith("/dense/bias"):
            raise UnsupportedError(
                f"{source}: {name}: dense layers with biases (a model without batch norm) are not supported"
            )
    head = sorted(layers[HEAD])
    if not head or [i for i, _ in head] != list(range(len(head))):
        raise InputError(f"{source}: expected {HEAD}/nl_0 … nl_k dense kernels, found {[i for i, _ in head]}")
    projection = sorted(layers[PROJECTION])
    base = base or EncoderConfig()
    in_channels = int(kernel[3])
    inputs = base.inputs
    if len(inputs) != in_channels:
        inputs = ("masked_em",) if in_channels == 1 else ("em", "mask", "masked_em")[:in_channels]
        if len(inputs) != in_channels:
            raise InputError(f"{source}: the model takes {in_channels} input channels; name them (inputs)")
    return EncoderConfig(
        input_size_zyx=base.input_size_zyx,
        downsample_zyx=base.downsample_zyx,
        inputs=inputs,
        channels=tuple(widths),  # type: ignore[arg-type]
        embedding_dim=int(head[-1][1][-1]),
        head_layers=len(head),
        projection_dim=int(projection[-1][1][-1]) if projection else base.projection_dim,
        projection_layers=len(projection) if projection else base.projection_layers,
    )


def read_segclr_checkpoint(
    prefix: Path | str, config: EncoderConfig | None = None
) -> tuple[SegCLREncoder, ImportSummary]:
    """Build a :class:`SegCLREncoder` holding Google's SegCLR checkpoint ``prefix`` (a prefix, ``.index``
    or ``.data-…`` path), in eval mode, fp32, plus a summary.

    Without ``config`` the architecture is inferred from the tensor shapes (:func:`infer_config`); with one,
    the checkpoint must match it. A checkpoint without the projection head (an inference export) loads with
    a freshly initialised projection (``summary.has_projection`` false). Raises :class:`InputError` with a
    one-line message for missing, mis-shaped or non-float tensors and architecture mismatches.
    """
    bundle = TensorBundle(prefix)
    source = str(bundle.prefix)
    found = infer_config(bundle, config)
    if config is not None and found != config:
        diffs = [
            f"{k} {getattr(found, k)} (config: {getattr(config, k)})"
            for k in (
                "channels",
                "inputs",
                "embedding_dim",
                "head_layers",
                "projection_dim",
                "projection_layers",
            )
            if getattr(found, k) != getattr(config, k)
        ]
        if diffs:
            raise InputError(f"{source}: checkpoint does not match the config: {'; '.join(diffs)}")
    config = config or found
    has_projection = f"{PROJECTION}/nl_0/dense/kernel" in bundle
    wanted = tf_variable_names(config, projection=has_projection)
    missing = sorted(name for name in wanted if name not in bundle)
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise InputError(f"{source}: missing model tensors {', '.join(missing[:3])}{more}")

    model = SegCLREncoder(config)
    state = model.state_dict()
    for tf_name, ours in wanted.items():
        array = bundle.read(tf_name)
        if not np.issubdtype(array.dtype, np.floating):
            raise InputError(f"{source}: tensor {tf_name} has dtype {array.dtype}, expected floating point")
        tensor = _to_torch(array)
        if tuple(tensor.shape) != tuple(state[ours].shape):
            want = tuple(_to_tf(state[ours]).shape)
            raise InputError(f"{source}: tensor {tf_name} has shape {array.shape}, the config expects {want}")
        state[ours] = tensor
    step = None
    if "global_step" in bundle and bundle.entry("global_step").shape == ():
        step = int(bundle.read("global_step"))
    for name, tensor in state.items():
        if name.endswith("num_batches_tracked"):
            state[name] = torch.tensor(step or 0, dtype=tensor.dtype)
    model.load_state_dict(state)
    ignored = [name for name in bundle.names() if name not in wanted]
    summary = ImportSummary(
        source, config, count_parameters(model), len(wanted), has_projection, ignored, step
    )
    return model.eval(), summary


def import_segclr_to_safetensors(
    prefix: Path | str, out_path: Path | str, config: EncoderConfig | None = None
) -> ImportSummary:
    """Import checkpoint ``prefix`` and write it with :func:`save_encoder` to ``out_path`` (atomically)."""
    model, summary = read_segclr_checkpoint(prefix, config)
    metadata = {"source_checkpoint": Path(summary.source).name, "source_format": "tensorflow-tensor-bundle"}
    if summary.global_step is not None:
        metadata["source_global_step"] = str(summary.global_step)
    summary.out_path = save_encoder(model, out_path, metadata=metadata)
    return summary


def export_segclr_checkpoint(
    model: SegCLREncoder, prefix: Path | str, *, global_step: int | None = None, projection: bool = True
) -> Path:
    """Write ``model`` as a TensorFlow tensor bundle with the legacy SegCLR variable names and layouts (the
    inverse of :func:`read_segclr_checkpoint`); returns the prefix."""
    state = model.state_dict()
    tensors = {tf: _to_tf(state[ours]) for tf, ours in tf_variable_names(model.config, projection).items()}
    if global_step is not None:
        tensors["global_step"] = np.asarray(global_step, dtype=np.int64)
    return write_tensor_bundle(prefix, tensors)
