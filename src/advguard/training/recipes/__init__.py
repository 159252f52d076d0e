"""Training recipes, registered by name in :data:`RECIPES`."""

from advguard.training.recipes.advt import AdvT, AdvTImitate
from advguard.training.recipes.base import RECIPES, Recipe, StepOutput, count_correct, make_recipe
from advguard.training.recipes.fast_at import FastAT
from advguard.training.recipes.iat import IAT
from advguard.training.recipes.mixup import Mixup
from advguard.training.recipes.noise_injection import InputNoise, NoiseInjection
from advguard.training.recipes.pgd_at import PGDAT
from advguard.training.recipes.purifier import ADD, APEGANRecipe
from advguard.training.recipes.standard import Standard
from advguard.training.recipes.trades import TRADES, KLObjective, trades_kl

__all__ = [
    "ADD",
    "IAT",
    "PGDAT",
    "RECIPES",
    "TRADES",
    "APEGANRecipe",
    "AdvT",
    "AdvTImitate",
    "FastAT",
    "InputNoise",
    "KLObjective",
    "Mixup",
    "NoiseInjection",
    "Recipe",
    "Standard",
    "StepOutput",
    "count_correct",
    "make_recipe",
    "trades_kl",
]
