"""Checkpoints that count: a checkpoint folder is resumable only when it is *whole*. The trainer
writes ``checkpoint-N/`` file by file; once it has finished (its ``on_save`` hook), :func:`mark_whole`
records every file and size in ``sft_magics_checkpoint.json``. :func:`checkpoint_problem` then finds
a killed save, a half-deleted folder or a truncated file (``.safetensors`` headers are checked too)."""

from __future__ import annotations

import json
from pathlib import Path

from ..files import read_json, write_json

CHECKPOINT_MARK = "sft_magics_checkpoint.json"


def checkpoint_step(path: Path) -> int | None:
    tail = path.name.split("-")[-1]
    return int(tail) if path.name.startswith("checkpoint-") and tail.isdigit() else None


def safetensors_problem(path: Path) -> str | None:
    """A truncated or damaged .safetensors file, found from its own header (no tensors loaded)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return f"{path.name} is truncated ({size} bytes)"
            n = int.from_bytes(head, "little")
            if n <= 0 or 8 + n > size:
                return f"{path.name} is truncated (header of {n} bytes, file of {size})"
            header = json.loads(f.read(n))
    except (OSError, ValueError) as err:
        return f"{path.name} cannot be read ({err.__class__.__name__})"
    try:
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except (AttributeError, KeyError, TypeError, IndexError):
        return f"{path.name} has a header that is not a safetensors header"
    if 8 + n + end != size:
        return f"{path.name} is truncated ({size} of {8 + n + end} bytes)"
    return None


def mark_whole(checkpoint: Path) -> None:
    """Called once the trainer has written a checkpoint completely: its files and sizes, so a
    later truncation or a half-deleted folder is recognised."""
    checkpoint = Path(checkpoint)
    files = {
        str(p.relative_to(checkpoint)): p.stat().st_size
        for p in sorted(checkpoint.rglob("*"))
        if p.is_file() and p.name != CHECKPOINT_MARK
    }
    write_json(checkpoint / CHECKPOINT_MARK, {"step": checkpoint_step(checkpoint), "files": files})


def checkpoint_problem(checkpoint: Path) -> str | None:
    """Why a checkpoint cannot be resumed from, or None when it is whole."""
    checkpoint = Path(checkpoint)
    mark = read_json(checkpoint / CHECKPOINT_MARK)
    if mark:
        for rel, size in mark.get("files", {}).items():
            p = checkpoint / rel
            if not p.is_file():
                return f"{rel} is missing"
            if p.stat().st_size != size:
                return f"{rel} is truncated ({p.stat().st_size} of {size} bytes)"
    else:
        # Not marked: the trainer writes trainer_state.json last, so without it the save never ended.
        try:
            json.loads((checkpoint / "trainer_state.json").read_text())
        except (OSError, ValueError):
            return "its save did not finish (no whole trainer_state.json)"
        # Never marked whole (a checkpoint from before marks, or from another tool): the files the
        # trainer needs to resume must be there themselves.
        missing = _missing_weights(checkpoint)
        if missing:
            return f"{missing} is missing (and the checkpoint was never marked whole)"
    for p in checkpoint.glob("*.safetensors"):
        problem = safetensors_problem(p)
        if problem:
            return problem
    return None


def _missing_weights(checkpoint: Path) -> str | None:
    """What a checkpoint lacks for the trainer to load its model: the weights (an adapter with its
    config, or a model with its config; a sharded model with every shard its index names)."""
    names = {p.name for p in checkpoint.iterdir()}
    if names & {"adapter_model.safetensors", "adapter_model.bin"}:
        return None if "adapter_config.json" in names else "adapter_config.json"
    if "adapter_config.json" in names:
        return "adapter_model.safetensors"
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if index in names:
            try:
                shards = set(json.loads((checkpoint / index).read_text())["weight_map"].values())
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                return f"a readable {index}"
            lost = sorted(shards - names)
            return lost[0] if lost else (None if "config.json" in names else "config.json")
    if names & {"model.safetensors", "pytorch_model.bin"}:
        return None if "config.json" in names else "config.json"
    return "the model weights (adapter_model.safetensors or model.safetensors)"
