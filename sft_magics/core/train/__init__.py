"""Training: the cell's config (TRL's names), every value checked, the plan (--dry-run), TRL recipes,
the model and tokenizer as training sees them, the fit check, the trainer and its events, answers
watched during training, and runs in other processes. The face: what other packages and users reach
for."""

from .config import TrainSpec
from .plan import Plan, plan
from .trainer import TrainingFailed, TrainResult, train
from .worker import BackgroundRun, launch

__all__ = ["BackgroundRun", "Plan", "TrainResult", "TrainSpec", "TrainingFailed", "launch", "plan", "train"]
