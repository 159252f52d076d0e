"""Evaluation: threat-model settings, the worst-case cascade, reliability flags, records, and the
executors that compute an evaluation's chunks (in-process or on Ray)."""

from advguard.evaluation.checks import FLAG_EXPLANATIONS
from advguard.evaluation.config import EvalConfig, StepSpec
from advguard.evaluation.executors import (
    EXECUTORS,
    Executor,
    LocalExecutor,
    RayExecutor,
    make_executor,
)
from advguard.evaluation.harness import evaluate, load_eval_data, model_fingerprint
from advguard.evaluation.settings import SETTINGS, Prepared, Setting, prepare_step
from advguard.evaluation.store import RecordStore
from advguard.evaluation.summary import EvalSummary, StepSummary, summarize

__all__ = [
    "EXECUTORS", "FLAG_EXPLANATIONS", "SETTINGS", "EvalConfig", "EvalSummary", "Executor",
    "LocalExecutor", "Prepared", "RayExecutor", "RecordStore", "Setting", "StepSpec",
    "StepSummary", "evaluate", "load_eval_data", "make_executor", "model_fingerprint",
    "prepare_step", "summarize",
]
