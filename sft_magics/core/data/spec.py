"""What a ``dataset:`` key names, beyond a plain source: your columns (``columns``), a system
prompt (``system``), a conversion function (``convert``), a split or config, and mixtures of
datasets (alignment-handbook's ``dataset_mixture``). :func:`remap_rows` is applied by
:func:`core.data.load.load_data` to the raw rows, before the format is detected."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from .columns import check_columns
from .load import load_data
from .types import DataError, LoadedData, _digests_fingerprint, _pick_digests, _short

DATASET_KEYS = ("path", "config", "name", "split", "columns", "system", "convert", "streaming")
MIXTURE_KEYS = ("mixture", "seed", "test_split_size", "streaming")


def check_dataset_value(value: Any, key: str = "dataset") -> None:
    """The types and ranges of a ``dataset:`` value, before anything is read: a mapping's keys, its
    ``columns`` (target → your column), ``system``, ``convert``, ``streaming``, and a mixture's entries,
    ``weight``, ``seed`` and ``test_split_size``. One line naming the key, the value and what it accepts."""
    from ..train.checks import check_bool, check_seed, check_split_size, check_text, refuse

    if not isinstance(value, Mapping):
        return  # a source: a file, folder, Hub id or variable, found (or not) by load_data
    if "mixture" in value:
        unknown = [k for k in value if k not in MIXTURE_KEYS]
        if unknown:
            raise DataError(f"{key}: unknown key '{unknown[0]}' in a mixture (use {', '.join(MIXTURE_KEYS)})")
        entries = value.get("mixture")
        if not isinstance(entries, list) or not entries:
            raise refuse(f"{key}.mixture", entries, "a list of datasets, each a mapping with a path")
        for k, entry in enumerate(entries):
            if not isinstance(entry, Mapping):
                raise refuse(f"{key}.mixture[{k}]", entry, "a mapping with a path (and weight, split, columns)")
            weight = entry.get("weight", 1.0)
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 < weight <= 1:
                raise refuse(f"{key}.mixture[{k}].weight", weight, "a fraction in (0, 1] of its rows")
            check_dataset_value({x: y for x, y in entry.items() if x != "weight"}, f"{key}.mixture[{k}]")
        check_seed(f"{key}.seed", value.get("seed"))
        check_split_size(f"{key}.test_split_size", value.get("test_split_size"))
        check_bool(f"{key}.streaming", value.get("streaming"))
        return
    unknown = [k for k in value if k not in DATASET_KEYS]
    if unknown:
        raise DataError(f"{key}: unknown key '{unknown[0]}' (use {', '.join(DATASET_KEYS)})")
    if value.get("path") is None:
        raise DataError(f"{key}: 'path' is required (a file, folder, Hub id or notebook variable)")
    for name in ("split", "config", "name"):
        check_text(f"{key}.{name}", value.get(name), "a name")
    system = value.get("system")
    if system is not None and not isinstance(system, str):  # "" adds nothing, as before
        check_text(f"{key}.system", system, "the text of a system message")
    convert = value.get("convert")
    if convert is not None and not callable(convert):
        check_text(f"{key}.convert", convert, "a function row -> conversation, or the name of a notebook function")
    streaming = value.get("streaming", False)
    if not isinstance(streaming, bool):
        raise DataError(f"{key}: streaming must be true or false, got {_short(streaming)}")
    check_columns(value.get("columns"), f"{key}.columns")


def load_dataset_spec(value: Any, *, namespace: Mapping[str, Any] | None = None, strict: bool = True) -> LoadedData:
    """What a ``dataset:`` key names: a source (file, folder, variable, Hub id), or a mapping
    ``{path, config, split, columns, system, convert, streaming}`` (``convert``: a function, or the
    name of a notebook function; ``streaming``: read a Hub dataset as it downloads, as ``datasets``'
    ``streaming=True``), or ``{mixture: [...], seed, test_split_size, streaming}`` (each entry a
    mapping with an optional ``weight``: the fraction of its rows kept)."""
    check_dataset_value(value)
    if not isinstance(value, Mapping):
        return load_data(value, namespace=namespace, strict=strict)
    if "mixture" in value:
        return _load_mixture(value, namespace)
    convert = value.get("convert")
    if isinstance(convert, str):
        if not (namespace and callable(namespace.get(convert))):
            raise DataError(f"dataset: convert: no notebook function named '{convert}'")
        convert = namespace[convert]
    return load_data(
        value["path"],
        split=value.get("split"),
        config=value.get("config") or value.get("name"),
        namespace=namespace,
        strict=strict,
        columns=value.get("columns"),
        system=value.get("system"),
        convert=convert,
        streaming=value.get("streaming", False),
    )


def _load_mixture(value: Mapping, namespace: Mapping[str, Any] | None) -> LoadedData:
    """alignment-handbook's ``dataset_mixture``: each dataset's rows, a ``weight`` fraction of them
    (seeded), concatenated. They must normalise to one format."""
    from datasets import concatenate_datasets

    entries = value["mixture"]  # checked by check_dataset_value
    seed = 42 if value.get("seed") is None else value["seed"]  # the same rows on every load
    parts, described = [], []
    for entry in entries:
        entry = dict(entry)
        weight = entry.pop("weight", 1.0)
        if "streaming" in value and isinstance(entry, dict):
            entry.setdefault("streaming", value["streaming"])  # TRL's mixture-wide switch
        data = load_dataset_spec(entry, namespace=namespace)
        if weight < 1:  # the first rows of a seeded shuffle, as datasets' shuffle(seed).select(range(keep))
            import numpy as np

            keep = max(1, int(len(data) * weight))
            order = np.random.default_rng(seed).permutation(len(data))[:keep].tolist()
            data = replace(data, dataset=data.dataset.select(order), row_digests=_pick_digests(data.row_digests, order))
        parts.append(data)
        described.append(f"{data.source} ×{weight:g} ({len(data)} rows)")
    formats = {p.format for p in parts}
    if len(formats) > 1:
        raise DataError(f"dataset mixture: the datasets have different formats ({', '.join(sorted(formats))})")
    joined = concatenate_datasets([p.dataset for p in parts])
    digests = b"".join(p.row_digests for p in parts)
    return LoadedData(
        dataset=joined,
        format=parts[0].format,
        source_format=parts[0].source_format,
        source="mixture of " + " + ".join(described),
        notes=tuple(n for p in parts for n in p.notes),
        fingerprint=_digests_fingerprint(digests),
        row_digests=digests,
    )
