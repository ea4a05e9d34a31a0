"""Input adapters: raw inputs -> the encoder's input array ``[B, M, C]``."""

from perceiver.inputs.audio import AudioPatchAdapter, LogMelAdapter
from perceiver.inputs.image import (
    Conv1x1Adapter,
    ConvStemAdapter,
    ImageFourierAdapter,
    ImagePatchAdapter,
)
from perceiver.inputs.label import OneHotLabelAdapter
from perceiver.inputs.multimodal import MultimodalAdapter
from perceiver.inputs.text import TokenInputAdapter
from perceiver.inputs.video import VideoPatchAdapter

__all__ = [
    "AudioPatchAdapter", "Conv1x1Adapter", "ConvStemAdapter", "ImageFourierAdapter",
    "ImagePatchAdapter", "LogMelAdapter", "MultimodalAdapter", "OneHotLabelAdapter",
    "TokenInputAdapter", "VideoPatchAdapter",
]
