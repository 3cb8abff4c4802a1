"""The TRL recipe you already have, read as a ``%%sft_train`` cell.

``trl sft --config recipe.yaml`` takes three groups of keys: ``SFTConfig`` (passed through as they
are), TRL's ``ModelConfig`` (``model_name_or_path``, ``dtype``, ``use_peft``, ``lora_*``,
``load_in_4bit``, ...) and TRL's ``ScriptArguments`` (``dataset_name``, ``dataset_config``,
``dataset_train_split``, ...); alignment-handbook recipes add ``dataset_mixture`` and
``chat_template``. :func:`read_recipe` turns those keys into ours with TRL's meaning, and says how
each was read (``--dry-run`` shows the notes). Keys renamed by TRL or transformers
(``max_seq_length``, ``warmup_ratio``, ``torch_dtype``) are mapped with a note.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import SftError
from .checks import check_bool, check_seed, check_split_size, check_text, refuse

# ModelConfig → how the model is loaded
LOAD_KEYS = {
    "dtype": "dtype",
    "torch_dtype": "dtype",
    "attn_implementation": "attn_implementation",
    "trust_remote_code": "trust_remote_code",
    "model_revision": "revision",
}
# ModelConfig → LoraConfig fields (used when use_peft is true, as in TRL)
LORA_KEYS = {
    "lora_r": "r",
    "lora_alpha": "lora_alpha",
    "lora_dropout": "lora_dropout",
    "lora_target_modules": "target_modules",
    "lora_modules_to_save": "modules_to_save",
    "lora_target_parameters": "target_parameters",
    "use_rslora": "use_rslora",
    "use_dora": "use_dora",
}
# ModelConfig → bitsandbytes quantization (CUDA only)
QUANT_KEYS = ("load_in_4bit", "load_in_8bit", "bnb_4bit_quant_type", "use_bnb_nested_quant", "bnb_4bit_quant_storage")
# ScriptArguments
DATA_KEYS = (
    "dataset_name",
    "dataset_config",
    "dataset_train_split",
    "dataset_test_split",
    "dataset_streaming",
    "dataset_mixture",
)
# Renamed by TRL / transformers: old name → current name
RENAMED = {
    "max_seq_length": "max_length",
    "warmup_ratio": "warmup_steps",
    "evaluation_strategy": "eval_strategy",
    "preprocessing_num_workers": "dataset_num_proc",
}
# Accepted, with no effect here (said so in a note)
NO_EFFECT = {
    "ignore_bias_buffers": "only matters for DDP with buffers; sft_magics' launchers leave it at TRL's default",
    "overwrite_output_dir": "removed from transformers; a taken run name is refused (use --overwrite)",
    "lora_task_type": "sft_magics trains causal language models (task type CAUSAL_LM)",
}


class RecipeError(SftError, ValueError):
    """A recipe key that cannot be honoured here, in one line."""


def read_recipe(config: Mapping[str, Any]) -> tuple[dict, list[str]]:
    """``(config in our keys, notes)``: TRL's CLI keys become ours with TRL's meaning."""
    config = dict(config)
    notes: list[str] = []
    out: dict[str, Any] = {}
    out.update(_read_model(config, notes))
    out.update(_read_lora(config, notes, full_model="model" in out))
    out.update(_read_quantization(config))
    out.update(_read_data(config, notes))
    # Renamed and no-effect keys.
    for old, new in RENAMED.items():
        if old in config:
            if new in config:
                raise RecipeError(f"give either '{old}' (its old name) or '{new}', not both")
            config[new] = config.pop(old)
            notes.append(f"{old} → {new} (its current name)")
    for key, why in NO_EFFECT.items():
        if key in config:
            config.pop(key)
            notes.append(f"{key}: no effect ({why})")
    if "chat_template_path" in config:
        if "chat_template" in config:
            raise RecipeError("give either 'chat_template' or 'chat_template_path', not both")
        config["chat_template"] = config.pop("chat_template_path")
        notes.append("chat_template_path → chat_template")
    out.update(config)  # our own keys and SFTConfig fields, checked by TrainSpec.from_mapping
    return out, notes


def _read_model(config: dict, notes: list[str]) -> dict:
    """TRL's ModelConfig keys of the model and how it loads (``model_name_or_path``, ``dtype``, ...)."""
    out: dict[str, Any] = {}
    if "model_name_or_path" in config:
        if "model" in config:
            raise RecipeError("give either 'model' or 'model_name_or_path' (TRL's name for it), not both")
        out["model"] = config.pop("model_name_or_path")
        notes.append("model_name_or_path → model")
    load = {}
    for key, ours in LOAD_KEYS.items():
        if key in config:
            load[ours] = config.pop(key)
            if key != ours:
                notes.append(f"{key} → {ours} (model loading)")
    if load.get("revision") in (None, "main"):
        load.pop("revision", None)
    elif "revision" in load:
        raise RecipeError(
            f"model_revision {load['revision']!r}: loading a revision other than main is not supported yet"
        )
    if load:
        out["model_kwargs"] = load
    return out


def _read_lora(config: dict, notes: list[str], *, full_model: bool) -> dict:
    """LoRA as TRL reads it: only with ``use_peft: true``; a recipe that names its model without it is
    a full fine-tune (``full_model``)."""
    lora_given = {LORA_KEYS[k]: config.pop(k) for k in list(config) if k in LORA_KEYS}
    if "use_peft" in config:
        check_bool("use_peft", config["use_peft"])
        use_peft = bool(config.pop("use_peft"))
        if "lora" in config:
            raise RecipeError("give either 'lora' or TRL's use_peft / lora_* keys, not both")
        notes.append(
            f"use_peft: {str(use_peft).lower()} → lora: " + ("LoRA" if use_peft else "false (a full fine-tune)")
        )
        return {"lora": {k: v for k, v in lora_given.items() if v is not None} if use_peft else False}
    if lora_given:
        if "lora" in config:
            raise RecipeError("give either 'lora' or TRL's lora_* keys, not both")
        notes.append(
            "lora_* keys without use_peft: " + ("ignored, as in TRL (a full fine-tune)" if full_model else "LoRA")
        )
        return {"lora": False if full_model else {k: v for k, v in lora_given.items() if v is not None}}
    if full_model and "lora" not in config:
        notes.append("no use_peft: a full fine-tune, as in TRL (write use_peft: true for LoRA)")
        return {"lora": False}
    return {}


def _read_quantization(config: dict) -> dict:
    """bitsandbytes quantization (CUDA): ``load_in_4bit`` / ``load_in_8bit`` and the ``bnb_*`` options."""
    out: dict[str, Any] = {}
    quant = {k: config.pop(k) for k in list(config) if k in QUANT_KEYS}
    for key in ("load_in_4bit", "load_in_8bit", "use_bnb_nested_quant"):
        check_bool(key, quant.get(key))
    if quant.pop("load_in_4bit", False):
        out["load_in_4bit"] = True
    if quant.pop("load_in_8bit", False):
        out["load_in_8bit"] = True
    quant = {k: v for k, v in quant.items() if v is not None}
    if quant:
        out["quantization"] = quant
    return out


def _mixture_entry(k: int, d: Any) -> dict:
    """One of the handbook's ``dataset_mixture.datasets`` as one of our mixture's entries, checked."""
    where = f"dataset_mixture.datasets[{k}]"
    if not isinstance(d, Mapping):
        raise refuse(where, d, "a mapping {id, config, split, columns, weight}")
    check_text(f"{where}.id", d.get("id") or d.get("path"), "a dataset id, file or folder")
    columns = d.get("columns")
    if columns is not None and (not isinstance(columns, list) or not all(isinstance(c, str) and c for c in columns)):
        raise refuse(f"{where}.columns", columns, "a list of the column names to keep")
    entry = {"path": d.get("id") or d.get("path")}
    entry.update({key: d[key] for key in ("config", "split", "weight") if d.get(key) is not None})
    if columns:  # the handbook lists the columns to keep; they keep their names
        entry["columns"] = {c: c for c in columns}
    return entry


def _read_data(config: dict, notes: list[str]) -> dict:
    """ScriptArguments' dataset keys, and alignment-handbook's dataset_mixture."""
    out: dict[str, Any] = {}
    streaming = config.pop("dataset_streaming", False)
    if not isinstance(streaming, bool):
        raise RecipeError(f"dataset_streaming: expected true or false, got {streaming!r}")
    if "dataset_mixture" in config:
        mixture = config.pop("dataset_mixture")
        if not isinstance(mixture, Mapping) or not isinstance(mixture.get("datasets"), list):
            raise RecipeError(
                "dataset_mixture: expected {datasets: [{id, config, split, columns, weight}], seed, test_split_size}"
            )
        check_seed("dataset_mixture.seed", mixture.get("seed"))
        size = mixture.get("test_split_size") or None  # 0: no held-out part, as the handbook reads it
        size = check_split_size("dataset_mixture.test_split_size", size)
        entries = [_mixture_entry(k, d) for k, d in enumerate(mixture["datasets"])]
        out["dataset"] = {"mixture": entries, "seed": 42 if mixture.get("seed") is None else mixture["seed"]}
        streaming = streaming or mixture.get("streaming") is True
        if size is not None:
            out["eval_split"] = size  # a fraction or a row count
        notes.append(
            f"dataset_mixture → dataset (a mixture of {len(entries)})"
            + (f", test_split_size → eval_split {out['eval_split']:g}" if "eval_split" in out else "")
        )
    if "dataset_mixer" in config:  # the handbook's older form: {id: weight} and dataset_splits
        mixer = config.pop("dataset_mixer")
        splits = config.pop("dataset_splits", None) or ["train", "test"]
        if not isinstance(mixer, Mapping) or not mixer:
            raise RecipeError("dataset_mixer: expected {dataset id: weight}")

        def part(kind: str) -> list[dict]:
            return [{"path": ds, "split": sp, "weight": w} for ds, w in mixer.items() for sp in splits if kind in sp]

        out["dataset"] = {"mixture": part("train"), "seed": 42}
        if part("test"):
            out["eval_dataset"] = {"mixture": part("test"), "seed": 42}
        notes.append("dataset_mixer, dataset_splits → dataset (splits with 'train') and eval_dataset (with 'test')")
    if "dataset_name" in config:
        if "dataset" in config or "dataset" in out:
            raise RecipeError("give either 'dataset' (or dataset_mixture) or 'dataset_name', not both")
        source = {"path": config.pop("dataset_name")}
        if config.get("dataset_config") is not None:
            source["config"] = config["dataset_config"]
        source["split"] = config.pop("dataset_train_split", None) or "train"
        out["dataset"] = source
        notes.append("dataset_name, dataset_config, dataset_train_split → dataset")
        test = config.pop("dataset_test_split", "test")
        if config.get("eval_strategy", "no") != "no" and "eval_dataset" not in config:
            out["eval_dataset"] = {**source, "split": test}
            notes.append(f"dataset_test_split → eval_dataset (split {test!r}), as TRL does when eval_strategy is set")
    config.pop("dataset_config", None)
    if streaming and "dataset" not in out:
        notes.append("dataset_streaming: no effect without dataset_name or dataset_mixture")
    elif streaming:
        for key in ("dataset", "eval_dataset"):
            if isinstance(out.get(key), dict):
                out[key]["streaming"] = True
        notes.append("dataset_streaming → streaming: Hub datasets are read as they download")
    for key in ("dataset_train_split", "dataset_test_split"):
        if key in config:
            config.pop(key)
            notes.append(f"{key}: no effect without dataset_name")
    return out
