"""Training: one loop (:func:`train`) with pluggable, registered recipes."""

from advguard.training.config import TrainConfig
from advguard.training.evaluate import evaluate_accuracy, predict
from advguard.training.loop import (
    MODEL_FILE,
    STATE_FILE,
    TrainingInterrupted,
    TrainRecord,
    TrainResult,
    prepare_data,
    train,
)
from advguard.training.recipes import RECIPES, Recipe, StepOutput, make_recipe
from advguard.training.schedules import SCHEDULES, Schedule, make_schedule

__all__ = [
    "MODEL_FILE", "RECIPES", "SCHEDULES", "STATE_FILE", "Recipe", "Schedule", "StepOutput",
    "TrainConfig", "TrainRecord", "TrainResult", "TrainingInterrupted", "evaluate_accuracy",
    "make_recipe", "make_schedule", "predict", "prepare_data", "train",
]
