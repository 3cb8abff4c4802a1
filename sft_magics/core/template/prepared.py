"""What training is fed, prepared once: ``input_ids`` and ``assistant_masks`` per row, computed in
batched chunks (:func:`core.template.counts.encode_rows`, with the rules of
:func:`core.template.tokens.tokenize_row`), and kept on disk under a fingerprint of everything that decides
them — the rows, the tokenizer (vocabulary, added tokens, chat template), the mask method, the
train-on-all switch and the preparation code itself — so a re-run, a resume or a second run with
other hyper-parameters loads them instead of preparing again. ``max_length`` is not part of it:
TRL truncates afterwards, as for rows it tokenizes itself.

The cache is ``$SFT_MAGICS_CACHE/prepared/<key>/`` (``~/.cache/sft_magics``); an entry appears
whole or not at all (saved aside, then renamed), a damaged one is prepared again, and a cache that
cannot be written (a full or read-only disk) only costs the time.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

_CODE = ("counts.py", "tokens.py", "render.py", "prepared.py")  # the rules; a change invalidates entries


def prepared_key(data, tokenizer, method, train_on_all: bool) -> str:
    digest = hashlib.sha256()
    here = Path(__file__).resolve().parent
    for name in _CODE:
        digest.update((here / name).read_bytes())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    parts = [
        data.fingerprint,
        data.format,
        backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items())),
        repr(tokenizer.chat_template),
        repr(sorted((str(k), str(v)) for k, v in tokenizer.special_tokens_map.items())),
        repr(method),
        repr(bool(train_on_all)),
    ]
    for part in parts:
        digest.update(part.encode("utf-8", "surrogatepass"))
        digest.update(b"\0")
    return digest.hexdigest()[:32]


def to_trl_rows(
    data, tokenizer, *, train_on_all: bool = False, chunk: int = 1000, cache: bool = True, num_proc: int | None = None
):
    """Pre-tokenize for TRL: ``input_ids`` and ``assistant_masks`` (from the cache when this exact
    preparation was done before). TRL turns ``assistant_masks`` into labels, then truncates and drops
    rows with no trained token, as it does for the rows it tokenizes itself.

    ``num_proc`` (TRL's ``dataset_num_proc``): processes preparing chunks side by side (``datasets``'
    own ``map(num_proc=...)``); None: one, as in TRL. The result is the same either way (tested). On
    the 2-core machine here two processes gave 1.17x / 1.07x / 0.96x of one at 1k / 4k / 16k rows
    (``benchmarks/bench_prepare_vs_trl.py``): shipping the chunks' results between processes costs
    about what the second core saves, so more processes are opt-in, not the default."""
    from ..data.types import batch_rows
    from ..models import cache_dir
    from .counts import encode_rows
    from .tokens import choose_mask_method

    method = choose_mask_method(tokenizer) if data.format == "messages" else None
    folder = cache_dir() / "prepared" / prepared_key(data, tokenizer, method, train_on_all) if cache else None
    if folder is not None and (folder / "dataset_info.json").is_file():
        from datasets import load_from_disk

        try:
            # Where a fresh preparation would be: in memory for data held in memory (the trainer's own steps
            # then write nothing into the cache), memory-mapped for data too large for it (core.rowstore).
            return load_from_disk(str(folder), keep_in_memory=not data.dataset.cache_files)
        except Exception:
            shutil.rmtree(folder, ignore_errors=True)  # damaged: prepared again below

    fmt, row_index = data.format, data.row_index  # not `data` itself: a worker process would receive the rows

    def encode(batch, indices):
        ids, masks = encode_rows(tokenizer, batch_rows(batch), fmt, method, indices[0] if indices else 0, row_index)
        return {"input_ids": ids, "assistant_masks": [[1] * len(x) for x in ids] if train_on_all else masks}

    procs = _processes(num_proc, len(data.dataset), chunk)
    prepared = data.dataset.map(
        encode,
        batched=True,
        with_indices=True,
        batch_size=chunk,
        remove_columns=data.dataset.column_names,
        num_proc=procs if procs > 1 else None,
        # Never datasets' own map cache (data on disk has one): it keys on the function by name, not on the
        # code of encode_rows, so an upgrade could be served rows prepared by old rules. Ours keys on the code.
        load_from_cache_file=False,
    )
    if folder is not None:
        _store(prepared, folder)
        if prepared.cache_files and (folder / "dataset_info.json").is_file():
            # Data on disk: map wrote its result beside the data; the stored copy replaces it (one copy on disk).
            from datasets import load_from_disk

            written = [Path(f["filename"]) for f in prepared.cache_files]
            prepared = load_from_disk(str(folder))
            for path in written:
                path.unlink(missing_ok=True)
    return prepared


def _processes(num_proc: int | None, rows: int, chunk: int) -> int:
    """Processes for the preparation: as asked (never more than there are chunks), else one."""
    if not num_proc or num_proc < 2:
        return 1
    return max(1, min(int(num_proc), -(-rows // chunk)))


def _store(prepared, folder: Path) -> None:
    import os

    partial = folder.with_name(f".{folder.name}.{os.getpid()}.partial")
    try:
        shutil.rmtree(partial, ignore_errors=True)
        prepared.save_to_disk(str(partial))
        os.replace(partial, folder)  # whole or not at all; a concurrent identical entry is as good
    except OSError:
        shutil.rmtree(partial, ignore_errors=True)  # a cache: no space, no write access, a race — only time is lost


def check_something_trained(
    prepared, max_length: int | None, tokenizer=None, *, truncation_mode: str = "keep_start", packing: bool = False
) -> None:
    """Before training: at least one row keeps a trained token once TRL truncates it to ``max_length``
    (TRL drops rows with none, and with none left it fails at its first step with a sampler error).
    Else one line that says why: no answer text was rendered to train on (or the template's
    generation markers enclose nothing), or every answer lies past ``max_length``."""
    from ..errors import ConfigError

    if packing or not max_length:  # packed rows are not cut at max_length (bfd_split, wrapped carry the rest on)
        max_length = None

    def kept(mask):
        if max_length is None:
            return mask
        return mask[-max_length:] if truncation_mode == "keep_end" else mask[:max_length]

    untrained = truncated = 0
    for batch in prepared.iter(batch_size=1000):
        for mask in batch["assistant_masks"]:
            if any(kept(mask)):
                return  # the usual case: found in the first row
            if any(mask):
                truncated += 1
            else:
                untrained += 1
    if not untrained and not truncated:
        raise ConfigError("the training data has no rows")
    why = []
    if untrained:
        from .tokens import has_generation_markers

        markers = tokenizer is not None and has_generation_markers(getattr(tokenizer, "chat_template", None))
        why.append(
            f"{untrained:,} have no trained token at all ("
            + (
                "the template's {% generation %} markers enclose nothing"
                if markers
                else "the chat template renders no assistant text to train on"
            )
            + ")"
        )
    if truncated:
        why.append(f"{truncated:,} have their trained tokens only past max_length {max_length} (raise max_length)")
    raise ConfigError(
        f"nothing to train: no row has a trained token — {'; '.join(why)}. Look at a row with %sft_template "
        "(trained tokens are marked) or %sft_data"
    )
