"""Silence the libraries' own progress bars and known-noise warnings while we drive them: our
display is the only progress display (DESIGN: exactly one)."""

from __future__ import annotations

import contextlib
import warnings


@contextlib.contextmanager
def quiet_libraries():
    import datasets
    from transformers.utils import logging as hf_logging

    bars_were_on = datasets.is_progress_bar_enabled()
    hf_bars_were_on = hf_logging.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            # transformers 5 renamed gradient checkpointing; TRL still uses the old name internally.
            warnings.filterwarnings("ignore", message=r".*gradient_checkpointing.*deprecated", category=FutureWarning)
            warnings.filterwarnings(
                "ignore", message=r".*is_gradient_checkpointing.*deprecated", category=FutureWarning
            )
            # TRL 1.16 asks for the pad token on the tokenizer instead of SFTConfig's key: it is settled
            # there before training (train/model.py settle_tokenizer), so the key's warning says nothing true.
            warnings.filterwarnings("ignore", message=r"`pad_token` is deprecated", category=FutureWarning)
            yield
    finally:
        if bars_were_on:
            datasets.enable_progress_bars()
        if hf_bars_were_on:
            hf_logging.enable_progress_bar()
