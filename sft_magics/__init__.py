"""sft_magics: supervised fine-tuning of chat LLMs as a notebook-native workflow.

In a notebook: ``%load_ext sft_magics``. Without IPython, the same features are plain functions:
``sft_magics.load_data``, ``load_model``, ``train``, ``data_stats``, ``render`` ...

Nothing heavy is imported here: torch, transformers, trl, peft and datasets load only when a
feature that needs them runs, so ``%load_ext`` stays fast.
"""

from __future__ import annotations

__version__ = "0.1.0"

# Public core API, resolved lazily (PEP 562) so importing the package stays cheap.
_LAZY = {
    "load_data": "sft_magics.core.data",
    "train_val_split": "sft_magics.core.data",
    "DataError": "sft_magics.core.data",
    "load_model": "sft_magics.core.models",
    "load_tokenizer": "sft_magics.core.models",
    "resolve_model": "sft_magics.core.models",
    "ModelError": "sft_magics.core.models",
    "DEFAULT_MODEL": "sft_magics.core.models",
    "TrainSpec": "sft_magics.core.train",
    "train": "sft_magics.core.train",
    "ConfigError": "sft_magics.core.errors",
    "data_stats": "sft_magics.core.template",
    "render": "sft_magics.core.template.tokens",
    "generate": "sft_magics.core.evaluate",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sft_magics' has no attribute '{name}'")


def load_ipython_extension(ipython) -> None:
    """Called by ``%load_ext sft_magics``: register the magics."""
    from .magics import SftMagics
    from .magics._runner import await_transformer, kernel_pumps_comms_when_awaiting

    ipython.register_magics(SftMagics(shell=ipython))
    # In ipykernel >= 7 a Stop button click is only handled while the cell awaits: run
    # %%sft_train cells as coroutines there (see magics/_runner.py).
    if kernel_pumps_comms_when_awaiting() and await_transformer not in ipython.input_transformers_post:
        ipython.input_transformers_post.append(await_transformer)


def unload_ipython_extension(ipython) -> None:
    """Called by ``%unload_ext sft_magics``: remove our magics again."""
    from .magics import SftMagics

    manager = ipython.magics_manager
    for kind, names in SftMagics.magics.items():
        for name in names:
            manager.magics[kind].pop(name, None)
    manager.registry.pop("SftMagics", None)
    from .magics._runner import await_transformer

    if await_transformer in ipython.input_transformers_post:
        ipython.input_transformers_post.remove(await_transformer)
