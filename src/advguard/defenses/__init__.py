"""Defenses: the protocol (traits, BPDA surrogates, owned randomness), composition, and the
registered defenses."""

from advguard.defenses.adv_transform import AdvTransform
from advguard.defenses.base import (
    Averaged,
    Defense,
    Pipeline,
    Randomness,
    Traits,
    Transform,
    Undefended,
    as_defense,
    derive_seed,
    gradient_inside_forward,
)
from advguard.defenses.cap import CAP
from advguard.defenses.mixup_inference import MixupInference
from advguard.defenses.post_training import PostTrain
from advguard.defenses.purifier import ADDDefense, APEGANDefense, Purifier
from advguard.defenses.reference import BitDepthReduction, GaussianNoise
from advguard.defenses.registry import DEFENSES, build_defense, build_part
from advguard.defenses.resources import load_checkpoint_part, load_data_part
from advguard.defenses.smoothing import Smoothed, SmoothedPrediction, clopper_pearson
from advguard.defenses.transforms import GuoCropRescale, RandomRotation, XiePadding

__all__ = [
    "CAP",
    "DEFENSES",
    "ADDDefense",
    "APEGANDefense",
    "AdvTransform",
    "Averaged",
    "BitDepthReduction",
    "Defense",
    "GaussianNoise",
    "GuoCropRescale",
    "MixupInference",
    "Pipeline",
    "PostTrain",
    "Purifier",
    "RandomRotation",
    "Randomness",
    "Smoothed",
    "SmoothedPrediction",
    "Traits",
    "Transform",
    "Undefended",
    "XiePadding",
    "as_defense",
    "build_defense",
    "build_part",
    "clopper_pearson",
    "derive_seed",
    "gradient_inside_forward",
    "load_checkpoint_part",
    "load_data_part",
]
