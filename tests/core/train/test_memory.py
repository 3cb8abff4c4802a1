"""The fit check (core/memory.py): the estimate's parts follow the plan (batch, length, precision,
checkpointing, LoRA or not), the planned length comes from the data, a plan that will not fit gets
advice whose own estimate fits, and ``--dry-run`` shows it. (How close the estimate is to measured
peaks is benchmarks/bench_fit.py's job, quoted in the README.)"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from sft_magics.core.train import memory
from sft_magics.core.train.config import TrainSpec
from sft_magics.core.train.plan import plan

GIB = 1024**3


def _plan(tmp_path, tiny_model, rows, **keys):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return plan(TrainSpec.from_mapping("fit", {"model": tiny_model, "dataset": str(path), **keys}, str(tmp_path)))


def _rows(lengths):
    return [{"prompt": "q " * n, "completion": " a"} for n in lengths]


def test_parts_follow_the_plan(tmp_path, tiny_model):
    from transformers import AutoConfig

    p = _plan(tmp_path, tiny_model, _rows([5, 9]), per_device_train_batch_size=4)
    cfg = AutoConfig.from_pretrained(tiny_model)
    est = memory.estimate(p, cfg, trainable=1000, total=50_000, length=100)
    assert est.weights == 50_000 * 4 and est.training_state == 1000 * 12  # fp32 weights; grad + AdamW moments
    per_token = (
        4
        * cfg.num_hidden_layers
        * (
            memory.ACT_HIDDEN * cfg.hidden_size
            + memory.ACT_MLP * cfg.intermediate_size
            + memory.ACT_KV * cfg.num_key_value_heads * (cfg.hidden_size // cfg.num_attention_heads)
        )
    )
    assert est.activations == int(4 * 100 * (per_token + memory.TOKEN_BYTES))
    assert est.total == est.weights + est.training_state + est.activations + memory.OVERHEAD
    double = memory.estimate(p, cfg, trainable=1000, total=50_000, length=200)
    assert double.activations == 2 * est.activations
    ckpt = memory.activations(cfg, 4, 100, checkpointing=True)
    mixed = memory.activations(cfg, 4, 100, mixed=True)
    assert ckpt < est.activations and mixed < est.activations
    assert est.free is None and est.fits is None and "free memory unknown" in est.summary()


def test_planned_length_is_the_longest_row_capped_at_max_length(tmp_path, tiny_model):
    from sft_magics.core.models import load_tokenizer

    tok = load_tokenizer(tiny_model)
    p = _plan(tmp_path, tiny_model, _rows([3, 40, 7]), max_length=4096)
    length, source = memory.planned_length(p, tok)
    longest = max(len(tok("q " * n + " a" + tok.eos_token)["input_ids"]) for n in (3, 40, 7))
    assert abs(length - longest) <= 1 and source == "the longest row"
    capped = _plan(tmp_path, tiny_model, _rows([3, 40, 7]), max_length=10)
    assert memory.planned_length(capped, tok) == (10, f"max_length; the longest row has {length}")
    packed = _plan(tmp_path, tiny_model, _rows([3]), max_length=64, packing=True)
    assert memory.planned_length(packed, tok) == (64, "max_length (packing fills it)")


def test_a_plan_that_will_not_fit_gets_advice_that_fits(tmp_path, tiny_model):
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(tiny_model)
    p = _plan(tmp_path, tiny_model, _rows([5]), per_device_train_batch_size=16, gradient_accumulation_steps=2)
    base = memory.estimate(p, cfg, trainable=1000, total=50_000, length=512)
    fixed_cost = base.weights + base.training_state + base.overhead
    per_row = memory.activations(cfg, 1, 512)
    free = int((fixed_cost + 5.5 * per_row) / memory.MARGIN)  # room for 5 rows of activations, not 16
    est = memory.estimate(p, cfg, trainable=1000, total=50_000, length=512, free=free)
    assert est.fits is False and "will NOT fit" in est.summary()
    # 5 rows would fit; 4 x 8 keeps exactly the 32 rows per step of 16 x 2.
    advice = "per_device_train_batch_size: 4 with gradient_accumulation_steps: 8 (the same 32 rows per step)"
    assert est.advice[0] == advice
    p4 = replace(p, sft_args={**p.sft_args, "per_device_train_batch_size": 4, "gradient_accumulation_steps": 8})
    assert memory.estimate(p4, cfg, trainable=1000, total=50_000, length=512, free=free).fits is True
    # Not even one row fits: a shorter max_length, whose own estimate fits.
    tight = int((fixed_cost + 0.6 * per_row) / memory.MARGIN)
    short = memory.estimate(p, cfg, trainable=1000, total=50_000, length=512, free=tight)
    assert short.advice[0] == "max_length: 256 with per_device_train_batch_size: 1 (longer rows are cut)"
    p1 = replace(p, sft_args={**p.sft_args, "per_device_train_batch_size": 1})
    assert memory.estimate(p1, cfg, trainable=1000, total=50_000, length=256, free=tight).fits is True
    # Weights alone too big: no batch advice, the model is the problem.
    none = memory.estimate(p, cfg, trainable=1000, total=50_000, length=512, free=fixed_cost // 2)
    assert len(none.advice) == 1 and none.advice[0].endswith(
        "leave too little room: a smaller model, or a machine with more memory (or a GPU)"
    )
    full = replace(p, lora=None)
    assert (
        memory.estimate(full, cfg, trainable=50_000, total=50_000, length=512, free=fixed_cost // 2)
        .advice[0]
        .endswith("leave too little room: use LoRA (lora: {r: 16}) or a smaller model")
    )


def test_full_fine_tune_counts_every_parameter_as_trained(tmp_path, tiny_model):
    lora = _plan(tmp_path, tiny_model, _rows([5]))
    full = _plan(tmp_path, tiny_model, _rows([5]), lora=False)
    t_lora, total_lora, est_lora = memory.fit_check(lora)
    t_full, total_full, est_full = memory.fit_check(full)
    assert t_full == total_full and t_lora < total_lora
    assert est_full.training_state == 12 * total_full and est_lora.training_state == 12 * t_lora
    assert est_full.free and est_full.free > 0  # this machine's available memory was read


def test_dry_run_shows_the_fit_check_and_what_to_change(shell, tiny_model, qa_jsonl, capsys, monkeypatch):
    cell = f"model: {tiny_model}\ndataset: {qa_jsonl}\nper_device_train_batch_size: 8\n"
    summary = shell.run_cell_magic("sft_train", "--name f --dry-run -o plan", cell)
    fit = summary["fit"]
    assert fit["fits"] is True and fit["estimate_bytes"] == sum(fit["parts"].values()) and fit["batch_size"] == 8
    out = " ".join(capsys.readouterr().out.split())
    assert "fit check: ~" in out and ": fits" in out and "to fit:" not in out
    parts = fit["parts"]
    room = parts["weights"] + parts["training_state"] + parts["overhead"] + 3.5 * parts["activations"] / 8
    monkeypatch.setattr(memory, "free_memory", lambda device: int(room / memory.MARGIN))
    summary = shell.run_cell_magic("sft_train", "--name f --dry-run -o plan", cell)
    out = " ".join(capsys.readouterr().out.split())
    assert summary["fit"]["fits"] is False and "will NOT fit" in out
    advice = "per_device_train_batch_size: 2 with gradient_accumulation_steps: 4 (the same 8 rows per step)"
    assert summary["fit"]["advice"][0] == advice and f"to fit: {advice}" in out


@pytest.mark.parametrize("device", ["cpu"])
def test_free_memory_reads_the_machine(device):
    free = memory.free_memory(device)
    assert free is not None and 0 < free < 1 << 50


# --------------------------------------------------------------------------- GPU presets, checked


def test_gpu_only_settings_on_a_cpu_are_turned_off_with_a_note(tmp_path, tiny_model):
    p = _plan(
        tmp_path,
        tiny_model,
        _rows([5]),
        activation_offloading=True,
        use_liger_kernel=True,
        packing=True,
        max_length=64,
        model_kwargs={"attn_implementation": "flash_attention_2", "use_kernels": True},
    )
    assert p.sft_args["activation_offloading"] is False and p.sft_args["use_liger_kernel"] is False
    assert "attn_implementation" not in p.spec.model_kwargs and "use_kernels" not in p.spec.model_kwargs
    notes = "\n".join(p.notes)
    for text in (
        "activation_offloading: moves a GPU's activations to CPU memory; on this CPU it is turned off",
        "use_liger_kernel: runs Triton kernels, which need a CUDA GPU; on this CPU it is turned off",
        "attn_implementation flash_attention_2: needs CUDA and flash-attn",
        "model_kwargs use_kernels: the Hub's training kernels are CUDA kernels",
        "packing (bfd) trains padding-free: without FlashAttention transformers masks each packed row off",
    ):
        assert text in notes, text


def test_gpu_presets_check_their_packages_before_anything_loads(tmp_path, tiny_model, monkeypatch):
    """On a (pretended) CUDA machine: FlashAttention without its package, or a Hub kernel without
    `kernels`, is a one-line error naming the key and the install; padding_free with sdpa is a note."""
    import importlib.util

    import torch

    from sft_magics.core import models
    from sft_magics.core.errors import ConfigError

    monkeypatch.setattr(models, "choose_device_dtype", lambda *a, **k: ("cuda", torch.bfloat16))
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name in ("flash_attn", "kernels") else real(name, *a)
    )
    with pytest.raises(ConfigError, match=r"key 'attn_implementation': flash_attention_2 needs the flash-attn package"):
        _plan(tmp_path, tiny_model, _rows([5]), model_kwargs={"attn_implementation": "flash_attention_2"})
    with pytest.raises(ConfigError, match=r"kernels-community/flash-attn3 is a Hub kernel: pip install kernels"):
        _plan(tmp_path, tiny_model, _rows([5]), model_kwargs={"attn_implementation": "kernels-community/flash-attn3"})
    with pytest.raises(ConfigError, match=r"key 'model_kwargs.use_kernels': .* pip install kernels"):
        _plan(tmp_path, tiny_model, _rows([5]), model_kwargs={"use_kernels": True})
    with pytest.raises(
        ConfigError, match=r"key 'padding_free': without packing .* add packing: true, or max_length: null"
    ):
        _plan(tmp_path, tiny_model, _rows([5]), padding_free=True)
    p = _plan(tmp_path, tiny_model, _rows([5]), padding_free=True, max_length=None, activation_offloading=True)
    assert p.sft_args["activation_offloading"] is True and p.sft_args["bf16"] is True  # kept on a GPU
    assert any(n.startswith("padding_free: without FlashAttention") for n in p.notes)
    assert p.precision == "bf16 mixed precision (this GPU supports bf16; weights in bfloat16)"
    # TRL turns bf16 on when only fp16: false is given: said as TRL will train.
    p = _plan(tmp_path, tiny_model, _rows([5]), fp16=False)
    assert p.sft_args["bf16"] is True and p.precision == "bf16 mixed precision (asked; weights in bfloat16)"
    p = _plan(tmp_path, tiny_model, _rows([5]), fp16=False, bf16=False)
    assert p.precision == "no mixed precision (asked): trains in the weights' dtype, bfloat16"


def test_the_readmes_gpu_presets_pass_dry_run_here_with_their_notes(shell, tiny_model, qa_jsonl, capsys):
    """Each GPU preset block in the README is valid config: on this CPU --dry-run accepts it and
    says which settings it turned off, and why."""
    import re
    from pathlib import Path

    import yaml

    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text()
    section = readme[readme.index("**GPU presets**") : readme.index("**Out of memory**")]
    blocks = re.findall(r"```yaml\n(.*?)```", section, re.S)
    assert len(blocks) == 2
    for block in blocks:
        keys = yaml.safe_load(block.replace("\n  ", "\n"))
        cell = yaml.safe_dump({"model": tiny_model, "dataset": qa_jsonl, "max_length": 256, **keys})
        summary = shell.run_cell_magic("sft_train", "--name preset --dry-run -o plan", cell)
        notes = " ".join(summary["notes"])
        if "packing" in keys:
            assert "needs CUDA and flash-attn" in notes and "packing (bfd) trains padding-free" in notes
            assert summary["fit"]["length"] == 256  # packing fills max_length
        else:
            assert "activation_offloading: moves a GPU's activations" in notes and "use_kernels" in notes
            assert summary["config"]["gradient_checkpointing"] is True
    capsys.readouterr()
