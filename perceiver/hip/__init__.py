"""Hierarchical Perceiver (HiP): grouped blocks for very long, multimodal inputs."""

from perceiver.hip.grouping import GroupLayout, allocate_groups

__all__ = ["GroupLayout", "allocate_groups"]
