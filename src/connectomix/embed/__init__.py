"""Morphology embeddings compatible with Google's SegCLR: the CSV-ZIP format, the encoder, training,
inference, aggregation along skeletons and classifiers with out-of-distribution scores.

Import from the submodules (``connectomix.embed.csvzip``, ``connectomix.embed.model``, …): importing this
package does not import torch.
"""
