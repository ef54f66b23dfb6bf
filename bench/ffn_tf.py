"""TensorFlow peer for ``bench/ffn.py``: the cost of one FFN step of Google's network in TensorFlow.

Runs under a Python that has TensorFlow (not connectomix's environment; ``bench/ffn.py --tf-python PY``
starts it). It reads Google's FIB-25 checkpoint with TensorFlow's own checkpoint reader, builds
``convstack_3d`` (depth 12, width 32, 33³ FOV; ``conv0_a`` ReLU → ``conv0_b`` → 11 residual modules of
ReLU → conv → ReLU → conv, added to their input → ReLU → 1³ ``conv_lom``, added to the seed logits) as a
``tf.function`` of ``tf.nn.conv3d`` in NDHWC, the layout Google's code feeds, checks that its output equals
the reference output that ``bench/ffn.py`` computed with our engine on the same input, and times forward
passes at batch 1 (Google's inference advances one canvas by one forward pass per step).

This is a floor for the per-step cost of Google's own code on the same CPU: that code pays the same
convolutions and, on top, a TF1 session call and its Python canvas logic per step. A ratio of our
speed against it therefore understates our speed-up over Google's code.

Usage: ``PY bench/ffn_tf.py CHECKPOINT_PREFIX REFERENCE.npz --repeats N`` prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf  # after the log level is set

SCOPE = "seed_update"


def load_kernels(prefix: str, depth: int) -> list[tuple[str, tf.Tensor, tf.Tensor]]:
    """``(layer, kernel [kz, ky, kx, in, out], bias)`` in network order, read with TensorFlow's reader.

    The layer names are Google's (those ``connectomix.segment.tf_import`` maps onto our modules); they are
    listed here again because this script runs in a TensorFlow environment without connectomix.
    """
    reader = tf.train.load_checkpoint(prefix)
    layers = ["conv0_a", "conv0_b"]
    for i in range(1, depth):
        layers += [f"conv{i}_a", f"conv{i}_b"]
    layers.append("conv_lom")
    return [
        (
            name,
            tf.constant(reader.get_tensor(f"{SCOPE}/{name}/weights")),
            tf.constant(reader.get_tensor(f"{SCOPE}/{name}/biases")),
        )
        for name in layers
    ]


def build_network(kernels: list[tuple[str, tf.Tensor, tf.Tensor]]) -> tf.types.experimental.GenericFunction:
    """``f(image, seed) -> logits``, all ``[batch, z, y, x, 1]`` float32."""

    def conv(x: tf.Tensor, index: int) -> tf.Tensor:
        _, kernel, bias = kernels[index]
        return tf.nn.conv3d(x, kernel, strides=[1] * 5, padding="SAME") + bias

    @tf.function(jit_compile=False)
    def network(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        x = tf.concat([image, seed], axis=-1)
        x = conv(tf.nn.relu(conv(x, 0)), 1)
        for module in range((len(kernels) - 3) // 2):
            a = 2 + 2 * module
            x = x + conv(tf.nn.relu(conv(tf.nn.relu(x), a)), a + 1)
        return seed + conv(tf.nn.relu(x), len(kernels) - 1)

    return network


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="checkpoint prefix (…/model.ckpt-27465036)")
    parser.add_argument("reference", help="npz with image, seed [z, y, x] float32 and logits from our engine")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--depth", type=int, default=12)
    args = parser.parse_args(argv)

    network = build_network(load_kernels(args.checkpoint, args.depth))
    ref = np.load(args.reference)
    image = tf.constant(ref["image"][None, ..., None])
    seed = tf.constant(ref["seed"][None, ..., None])
    logits = network(image, seed).numpy()[0, ..., 0]  # also traces the function
    max_abs_diff = float(np.abs(logits - ref["logits"]).max())
    network(image, seed)
    start = time.perf_counter()
    for _ in range(args.repeats):
        network(image, seed).numpy()  # .numpy(): the step's result reaches Python, as in Google's loop
    ms_per_step = 1000 * (time.perf_counter() - start) / args.repeats
    report = {
        "tensorflow": tf.__version__,
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count(),
        "batch": 1,
        "repeats": args.repeats,
        "ms_per_step": ms_per_step,
        "max_abs_diff_vs_ours": max_abs_diff,
        "logit_range": [float(ref["logits"].min()), float(ref["logits"].max())],
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
