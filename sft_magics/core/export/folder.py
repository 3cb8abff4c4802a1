"""Shipping a model: a standalone folder that plain transformers loads, verified before it counts.

:func:`export_model` writes the weights (safetensors), the tokenizer with its chat template
(``chat_template.jinja``), a generation config whose ``eos_token_id`` holds the token the chat
template ends assistant turns with (``<|im_end|>`` for ChatML) as well as the EOS, and a short
README. Then it *verifies* the folder: it reloads it with ``AutoModelForCausalLM.from_pretrained``
and ``AutoTokenizer.from_pretrained`` only (no sft_magics code in the load path), renders a probe
prompt through the exported chat template, generates greedily with the reloaded model and with the
in-notebook model, and requires the same token ids, token for token. Until that passes the folder
holds an ``EXPORT_INCOMPLETE`` marker; a failed check leaves ``VERIFY_FAILED`` (with the reason).

Three kinds of export:

- ``merged`` (a LoRA model, ``merge=True``): the adapter is merged into the base weights of a
  *copy* of the model (``merge_and_unload()`` on a deep copy), so the in-notebook model keeps its
  adapter, bit for bit. Merging in place and unmerging afterwards would leave the notebook's
  weights off by rounding (``W + BA - BA`` is not ``W`` in floating point). The price is a second
  copy of the model in memory while exporting.
- ``adapter`` (a LoRA model, ``merge=False``): the adapter (``adapter_model.safetensors`` +
  ``adapter_config.json``) with the tokenizer and generation config. ``base_model_name_or_path``
  is made an absolute path when it is a local folder, so transformers (with peft installed) loads
  base + adapter from the folder alone — and the verification does exactly that.
- ``full`` (a model without an adapter, e.g. a ``lora: false`` run): the model's own weights.

Heavy imports (torch, transformers, peft) live inside functions.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import ExportError, SftError, one_line
from ..evaluate.generation import end_of_turn_token
from ..run.folder import is_run_folder
from .manifest import (
    MARK_FAILED,
    MARK_INCOMPLETE,
    ExportResult,
    _files,
    _manifest,
    _mark_failed,
    _readme,
    _scrubbed,
    _write_manifest,
)
from .verify import is_peft_model, verify_export

DEFAULT_PROBE = "What is the capital of France?"
DEFAULT_MAX_NEW_TOKENS = 32


# -- the one entry point ----------------------------------------------------------------------------


def export_model(
    model,
    tokenizer,
    to: str | os.PathLike,
    *,
    merge: bool,
    probe: str | None = None,
    force: bool = False,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    protected: Sequence[str | os.PathLike] = (),
    gguf: str | None = None,
    gguf_probes: Sequence[Any] | None = None,
    source: dict | None = None,
) -> ExportResult:
    """Write ``model`` and ``tokenizer`` to the folder ``to``, reload it with plain transformers and
    check that it generates exactly what ``model`` generates; return what was written.

    ``merge=True`` merges a LoRA adapter into (a copy of) the base weights; ``merge=False`` on a
    LoRA model writes the adapter. A model without an adapter is written whole either way.
    A non-empty ``to`` is refused unless ``force=True`` (then it is replaced), and ``force`` never
    replaces a folder that is, contains or lies inside a ``protected`` folder (the runs'
    ``output_dir``), the model's source, the working directory or the home folder.

    ``gguf="q8_0"`` (or f16, bf16, f32, q6_k, q5_k_m, q4_k_m, q4_0) also writes a GGUF and an
    Ollama Modelfile, verified in llama.cpp on ``gguf_probes`` (message lists or raw prompts; the
    probe by default): a LoRA model is merged for it. ``source`` (run, checkpoint) goes into the
    manifest, ``export_manifest.json``."""
    start = time.perf_counter()
    probe = DEFAULT_PROBE if probe is None else probe
    _check_request(model, tokenizer, probe, max_new_tokens)
    notes: list[str] = []
    if gguf is not None:
        gguf, merge = _check_gguf(model, gguf, merge, notes)
    kind = _kind(model, merge)
    to = Path(os.path.abspath(Path(to).expanduser()))  # absolute: the README's load snippet must work from anywhere
    try:
        _prepare_folder(to, force, _source_paths(model), [Path(p) for p in protected])
        (to / MARK_INCOMPLETE).write_text("sft_magics is writing this export; it has not been verified\n")
        eot = end_of_turn_token(tokenizer)
        base_model = _save_weights(model, to, kind)
        tokenizer.save_pretrained(str(to))
        gen_config = _save_generation_config(model, tokenizer, to, eot)
    except OSError as err:
        raise ExportError(f"could not write the export to {to}: {err.strerror or err}") from None
    except SftError:
        raise
    except Exception as err:
        if "No space left" in str(err) or "StorageFull" in str(err):
            raise ExportError(f"could not write the export to {to}: no space left on the device") from None
        raise
    try:
        check = verify_export(model, tokenizer, to, probe, max_new_tokens)
    except ExportError as err:
        _mark_failed(to, str(err))
        raise ExportError(f"{err}; the folder {to} is marked {MARK_FAILED}") from None

    eos = gen_config.eos_token_id
    stop_ids = [eos] if isinstance(eos, int) else list(eos)
    gguf_result = None
    if gguf is not None:
        probes = list(gguf_probes) if gguf_probes else [[{"role": "user", "content": probe}]]
        gguf_result = _export_gguf(model, tokenizer, to, gguf, probes, stop_ids, max_new_tokens, kind, source)
    result = ExportResult(
        path=to,
        kind=kind,
        files=[],
        probe=probe,
        prompt=check["prompt"],
        reply=check["reply"],
        token_ids=check["ids"],
        eos_token_id=stop_ids,
        pad_token_id=gen_config.pad_token_id,
        size_mb=0.0,
        base_model=base_model,
        logits_max_diff=check["logits_max_diff"],
        notes=notes + check["notes"],
        gguf=gguf_result,
        source=dict(source or {}),
    )
    (to / "README.md").write_text(_readme(result, tokenizer, eot))
    result.files = _files(to)
    result.seconds = time.perf_counter() - start
    _write_manifest(to, _manifest(result, tokenizer))
    result.files = _files(to)  # with the manifest
    result.size_mb = round(sum((to / f).stat().st_size for f in result.files) / 1e6, 3)
    (to / MARK_INCOMPLETE).unlink()
    return result


def _check_request(model, tokenizer, probe: str, max_new_tokens: int) -> None:
    """What the export is asked, checked before anything is written: a probe to verify it with, a
    generation length the model holds (the one rule of core/evaluate/generation.py), a chat template."""
    from ..evaluate.generation import check_new_tokens, context_length

    if not probe.strip():
        raise ExportError("the probe text is empty: give a question to verify the export with")
    check_new_tokens("max_new_tokens", max_new_tokens, context_length(model.config))
    if not tokenizer.chat_template:
        raise ExportError(
            "the tokenizer has no chat template: a chat model export needs one (set tokenizer.chat_template)"
        )


def _check_gguf(model, gguf: str, merge: bool, notes: list[str]) -> tuple[str, bool]:
    """Before anything is written: the GGUF type is known, the bindings and llama.cpp's converter are
    at hand (fetched once), and the model can be merged (a LoRA adapter is merged for a GGUF)."""
    from .llamacpp import GGUF_TYPES, bindings, converter

    gguf = gguf.lower()
    if gguf not in GGUF_TYPES:
        raise ExportError(f"--gguf {gguf!r}: choose one of {', '.join(GGUF_TYPES)}")
    bindings()  # the extra is installed, and
    converter()  # llama.cpp's converter is at hand (fetched once), before anything is written
    if is_peft_model(model) and getattr(model.get_base_model(), "is_quantized", False):
        raise ExportError(
            "a GGUF holds a merged model, and merging a LoRA adapter into 4-bit (QLoRA) weights is lossy: "
            "load the base model in bf16, attach the adapter, then export with --gguf"
        )
    if is_peft_model(model) and not merge:
        merge = True
        notes.append("a GGUF holds a standalone model: the LoRA adapter was merged for it")
    return gguf, merge


def _export_gguf(model, tokenizer, to: Path, gguf: str, probes, stop_ids, max_new_tokens: int, kind: str, source):
    """The GGUF beside the verified folder, verified in llama.cpp; a failure marks the folder (its files
    kept, the manifest saying why) and is one line."""
    from .gguf import export_gguf

    try:
        return export_gguf(model, tokenizer, to, gguf, probes, stop_ids=stop_ids, max_new_tokens=max_new_tokens)
    except OSError as err:  # a full disk, a folder made read-only meanwhile
        reason = f"could not write the GGUF in {to}: {err.strerror or err}"
        with contextlib.suppress(OSError):
            _mark_failed(to, reason)
        raise ExportError(f"{reason}; the folder is marked {MARK_FAILED} where the disk allowed it") from None
    except Exception as err:  # an ExportError with its reason, or the runtime's own failure
        if not isinstance(err, ExportError):
            err = ExportError(f"llama.cpp verification failed: {one_line(err, 240, named=True)}")
        partial = getattr(err, "last_result", None)
        with contextlib.suppress(OSError):  # a full disk may refuse these too; the error still reaches the user
            _mark_failed(to, str(err))
            _write_manifest(
                to,
                {
                    "source": source or {},
                    "kind": kind,
                    "verified": False,
                    "error": str(err),
                    "gguf": _scrubbed(partial.manifest()) if partial else None,
                },
            )
        raise ExportError(f"{err}; the folder {to} is marked {MARK_FAILED} (its files are kept)") from None


# -- where an export comes from ------------------------------------------------------------------------


# -- writing ------------------------------------------------------------------------------------------


def _kind(model, merge: bool) -> str:
    if not is_peft_model(model):
        return "full"
    if merge and getattr(model.get_base_model(), "is_quantized", False):
        raise ExportError(
            "merging a LoRA adapter into 4-bit (QLoRA) weights is lossy: export the adapter "
            "without merge, or load the base model in bf16, attach the adapter and merge there"
        )
    if not merge and _resized_vocabulary(model):
        raise ExportError(
            "this run's chat template added tokens to the vocabulary, so its adapter only loads onto a base model "
            "resized first: export it with --merge (a standalone folder that plain transformers loads)"
        )
    return "merged" if merge else "adapter"


def _resized_vocabulary(model) -> bool:
    """The adapter's embeddings are bigger than its base model's own vocabulary (added tokens)."""
    from transformers import AutoConfig

    for cfg in (getattr(model, "peft_config", None) or {}).values():
        base = getattr(cfg, "base_model_name_or_path", None)
        try:
            vocab = AutoConfig.from_pretrained(base).get_text_config().vocab_size if base else None
        except (OSError, ValueError):
            vocab = None
        if vocab is not None and model.get_input_embeddings().weight.shape[0] > vocab:
            return True
    return False


def _source_paths(model) -> list[Path]:
    """Local folders the model was loaded from (base and adapter): never replaced by an export."""
    names = [getattr(getattr(model, "config", None), "_name_or_path", None), getattr(model, "name_or_path", None)]
    for cfg in (getattr(model, "peft_config", None) or {}).values():
        names.append(getattr(cfg, "base_model_name_or_path", None))
    return [Path(n).expanduser().resolve() for n in names if n and Path(n).expanduser().exists()]


def _prepare_folder(to: Path, force: bool, sources: list[Path], protected: list[Path]) -> None:
    if to.exists() and not to.is_dir():
        raise ExportError(f"the export target {to} is a file, not a folder")
    if to.is_dir() and any(to.iterdir()):
        if not force:
            raise ExportError(
                f"the export folder {to} is not empty: choose another folder, or pass --force (force=True) to replace it"
            )
        target = to.resolve()
        guarded = [
            ("the working directory", Path.cwd()),
            ("the home folder", Path.home()),
            ("the file system root", Path(target.anchor)),
        ]
        guarded += [("the runs folder (output_dir)", p) for p in protected]
        guarded += [("the model being exported was loaded from it", s) for s in sources]
        for what, path in guarded:
            path = path.expanduser().resolve()
            if target == path or target in path.parents:
                raise ExportError(
                    f"refusing to replace {to}: it is (or contains) {what}"
                    if "loaded" not in what
                    else f"refusing to replace {to}: {what}"
                )
        for what, path in guarded[3:]:  # inside a run folder or the model's own folder: its files, not an export's
            path = path.expanduser().resolve()
            if path in target.parents:
                raise ExportError(
                    f"refusing to replace {to}: it lies inside {path} "
                    f"({'the runs folder' if 'output_dir' in what else 'the model source'}); export somewhere else"
                )
        if is_run_folder(target):
            raise ExportError(f"refusing to replace {to}: it is a training run folder")
        shutil.rmtree(to)
    to.mkdir(parents=True, exist_ok=True)


def _save_weights(model, to: Path, kind: str) -> str | None:
    """Write the weights (safetensors); returns the base model an adapter export points to."""
    import copy
    import gc

    if kind == "adapter":
        model.save_pretrained(str(to))
        return _absolute_base(to / "adapter_config.json")
    if kind == "merged":
        standalone = copy.deepcopy(model).merge_and_unload()  # a copy: the notebook model keeps its adapter
        standalone.config.use_cache = True  # training turns the KV cache off; an export is for inference
        standalone.save_pretrained(str(to))
        del standalone
        gc.collect()
        return None
    use_cache = model.config.use_cache
    model.config.use_cache = True
    try:
        model.save_pretrained(str(to))
    finally:
        model.config.use_cache = use_cache
    return None


def _absolute_base(adapter_config: Path) -> str:
    """A relative local base path would break once the folder moves: make it absolute."""
    config = json.loads(adapter_config.read_text())
    base = config.get("base_model_name_or_path") or ""
    if base and Path(base).expanduser().is_dir() and not Path(base).is_absolute():
        config["base_model_name_or_path"] = base = str(Path(base).expanduser().resolve())
        adapter_config.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    if not base:
        raise ExportError("the adapter does not name its base model (base_model_name_or_path is empty)")
    return base


def _save_generation_config(model, tokenizer, to: Path, eot: int | None):
    """The model's generation config, with the end-of-turn token and the EOS as stop tokens."""
    import copy

    from transformers import GenerationConfig

    config = copy.deepcopy(getattr(model, "generation_config", None) or GenerationConfig())
    old = config.eos_token_id
    ids: list[int] = []
    for i in [eot, *([old] if isinstance(old, int) else list(old or [])), tokenizer.eos_token_id]:
        if i is not None and int(i) not in ids:
            ids.append(int(i))
    config.eos_token_id = ids
    config._from_model_config = False  # a deliberate config now: transformers must not rebuild it from config.json
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else config.pad_token_id
    config.pad_token_id = pad if pad is not None else (ids[0] if ids else None)
    if config.bos_token_id is None and tokenizer.bos_token_id is not None:
        config.bos_token_id = tokenizer.bos_token_id
    config.save_pretrained(str(to))
    return config


# -- the note in the folder ---------------------------------------------------------------------------
