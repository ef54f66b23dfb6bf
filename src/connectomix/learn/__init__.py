"""Learning from proofreading: LoRA adapters for the FFN convolutions, the continual learner (batch and
streaming) with its replay buffer, the gated weights registry, and the closed loop (:mod:`.loop`)."""

from connectomix.learn.continual import ContinualLearner, FitResult, default_lora_config
from connectomix.learn.fov_loss import FovLoss, fov_loss
from connectomix.learn.lora import (
    Adapter,
    LoRAConfig,
    LoRAConv3d,
    adapter_state,
    add_lora,
    apply_adapter,
    extract_adapter,
    fuse_adapters,
    load_adapter,
    load_adapter_state,
    lora_parameters,
    merge_and_remove_lora,
    merge_lora,
    remove_lora,
    save_adapter,
    unmerge_lora,
)
from connectomix.learn.patches import Patch, patch_shape, patches_from_tasks
from connectomix.learn.registry import Entry, GateResult, GateScores, ServedChange, WeightsRegistry
from connectomix.learn.replay import ReplayBuffer, confident_patches, ground_truth_patches
from connectomix.learn.streaming import StreamingLearner, StreamReport, StreamRound

__all__ = [
    "Adapter",
    "ContinualLearner",
    "Entry",
    "FitResult",
    "FovLoss",
    "GateResult",
    "GateScores",
    "LoRAConfig",
    "LoRAConv3d",
    "Patch",
    "ReplayBuffer",
    "ServedChange",
    "StreamReport",
    "StreamRound",
    "StreamingLearner",
    "WeightsRegistry",
    "adapter_state",
    "add_lora",
    "apply_adapter",
    "confident_patches",
    "default_lora_config",
    "extract_adapter",
    "fov_loss",
    "fuse_adapters",
    "ground_truth_patches",
    "load_adapter",
    "load_adapter_state",
    "lora_parameters",
    "merge_and_remove_lora",
    "merge_lora",
    "patch_shape",
    "patches_from_tasks",
    "remove_lora",
    "save_adapter",
    "unmerge_lora",
]
