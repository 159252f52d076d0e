"""Training recipes, registered by name in :data:`RECIPES`."""

from advguard.training.recipes.base import RECIPES, Recipe, StepOutput, count_correct, make_recipe
from advguard.training.recipes.mixup import Mixup
from advguard.training.recipes.standard import Standard

__all__ = ["RECIPES", "Mixup", "Recipe", "Standard", "StepOutput", "count_correct", "make_recipe"]
