"""Hierarchical Perceiver (HiP): grouped blocks for very long, multimodal inputs."""

from perceiver.hip.blocks import BlockConfig, HiPBlock, regroup
from perceiver.hip.bottleneck import HiPClassBottleneck
from perceiver.hip.grouping import GroupLayout, allocate_groups
from perceiver.hip.model import HiP
from perceiver.hip.variants import VARIANTS, build_hip, hip_config

__all__ = ["VARIANTS", "BlockConfig", "GroupLayout", "HiP", "HiPBlock", "HiPClassBottleneck",
           "allocate_groups", "build_hip", "hip_config", "regroup"]
