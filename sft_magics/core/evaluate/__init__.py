"""Evaluation: generation and its stop tokens (one home), the metric registry, examples, the report
(base vs few-shot prompting vs tuned), and chat sessions. The face: what other packages and users
reach for."""

from .chat import ChatSession
from .evaluation import evaluate_target, examples_from, run_evaluation
from .example import Example
from .generation import check_new_tokens, end_of_turn_token, generate, stop_token_ids
from .metrics import METRICS
from .report import EvalReport, EvalResult

__all__ = [
    "METRICS",
    "ChatSession",
    "EvalReport",
    "EvalResult",
    "Example",
    "check_new_tokens",
    "end_of_turn_token",
    "evaluate_target",
    "examples_from",
    "generate",
    "run_evaluation",
    "stop_token_ids",
]
