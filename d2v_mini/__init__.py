"""d2v_mini: data2vec for speech, images and text, small and readable.

    from d2v_mini import Data2Vec, preset
    model = Data2Vec(preset("image", "tiny"))
"""
from .config import (Data2VecConfig, EMAConfig, GuardConfig, ImageConfig, LossConfig, MaskingConfig, OptimConfig,
                     SpeechConfig, TargetConfig, TextConfig, override)
from .data2vec import Data2Vec, Data2VecOutput
from .encoder import build_encoder
from .presets import PRESETS, preset

__version__ = "0.1.0"
__all__ = ["Data2Vec", "Data2VecOutput", "Data2VecConfig", "SpeechConfig", "ImageConfig", "TextConfig",
           "MaskingConfig", "TargetConfig", "EMAConfig", "LossConfig", "OptimConfig", "GuardConfig", "override",
           "build_encoder", "preset", "PRESETS"]
