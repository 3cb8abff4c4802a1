"""%sft_export: merged / adapter / full exports that plain transformers reloads, verified token for token.

The shared tiny model answers every prompt with one repeated token, which would make "the reloaded
model generates the same tokens" an empty check. These tests use a *lively* copy of it (weights
re-drawn at a larger scale): its greedy replies vary token by token, and a 2-step LoRA run at a high
learning rate changes the reply (checked below), so an export that lost or garbled the adapter fails.
"""

from __future__ import annotations

import json
import re

import pytest
from IPython.core.error import UsageError

from sft_magics.core.errors import ExportError
from sft_magics.core.evaluate.generation import end_of_turn_token
from sft_magics.core.export import folder as export_mod
from sft_magics.core.export.folder import export_model
from sft_magics.core.export.manifest import MARK_FAILED, MARK_INCOMPLETE

PROBE = "What is the capital of France?"


@pytest.fixture(scope="module")
def lively_model(tiny_model, tmp_path_factory) -> str:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tmp_path_factory.mktemp("lively-model")
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:  # ~N(0, 4/fan_in): activations of order one, logits that vary
                p.copy_(torch.randn(p.shape, generator=g) * 2.0 / p.shape[1] ** 0.5)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory, lively_model):
    """Two finished runs on the lively model: 'lora' (2 steps, LoRA) and 'full' (lora: false)."""
    from sft_magics.core.train.config import TrainSpec
    from sft_magics.core.train.trainer import train

    root = tmp_path_factory.mktemp("export-runs")
    data = root / "qa.jsonl"
    data.write_text(
        "".join(
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": f"Person {i} is {20 + i}."},
                        {"role": "assistant", "content": json.dumps({"name": f"N{i}", "age": 20 + i})},
                    ]
                }
            )
            + "\n"
            for i in range(16)
        )
    )
    common = {
        "model": lively_model,
        "dataset": str(data),
        "max_steps": 2,
        "per_device_train_batch_size": 4,
        "learning_rate": 1e-2,
        "save_steps": 100,
    }
    runs = root / "runs"
    results = {
        "lora": train(TrainSpec.from_mapping("lora", common, output_dir=str(runs))),
        "full": train(
            TrainSpec.from_mapping("full", {**common, "lora": False, "learning_rate": 1e-3}, output_dir=str(runs))
        ),
    }
    return runs, results


@pytest.fixture(scope="module")
def lora_run(runs_dir):
    return runs_dir[1]["lora"]


def _prompt_ids(tokenizer, probe=PROBE):
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": probe}], tokenize=False, add_generation_prompt=True
    )
    return tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]


def _greedy(model, ids, n=32, **kw):
    import torch

    with torch.no_grad():
        out = model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False, pad_token_id=2, **kw
        )
    return out[0, ids.shape[1] :].tolist()


def _logits(model, ids):
    import torch

    with torch.no_grad():
        return model(ids).logits


def test_merged_export_round_trip_loads_with_plain_transformers(lora_run, tmp_path):
    import torch
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sft_magics.core.evaluate.generation import adapter_disabled

    model, tokenizer = lora_run.model, lora_run.tokenizer
    ids = _prompt_ids(tokenizer)
    with adapter_disabled(model) as base:
        base_reply = _greedy(base, ids, eos_token_id=[2])
    result = export_model(model, tokenizer, tmp_path / "merged", merge=True, probe=PROBE)

    # The comparison means something: the adapter changes the reply, so an export without it would fail.
    assert len(result.token_ids) >= 8 and len(set(result.token_ids)) >= 4
    assert result.token_ids != base_reply
    assert result.verified and result.merged and result.kind == "merged" and result.probe == PROBE
    assert result.reply == tokenizer.decode(result.token_ids, skip_special_tokens=True)
    assert {
        "model.safetensors",
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "README.md",
    } <= set(result.files)
    folder = tmp_path / "merged"
    assert not (folder / "adapter_config.json").exists()  # standalone: nothing for peft to do
    assert not (folder / MARK_INCOMPLETE).exists() and not (folder / MARK_FAILED).exists()
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) == result.files
    assert result.size_mb == pytest.approx(sum((folder / f).stat().st_size for f in result.files) / 1e6, abs=1e-3)
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        assert not [k for k in f.keys() if "lora_" in k or "base_layer" in k]  # noqa: SIM118 - safe_open has no __iter__
    assert (folder / "chat_template.jinja").read_text() == tokenizer.chat_template

    reloaded = AutoModelForCausalLM.from_pretrained(folder).eval()
    exported_tok = AutoTokenizer.from_pretrained(folder)
    assert type(reloaded).__name__ == "LlamaForCausalLM" and not hasattr(reloaded, "peft_config")
    assert not [n for n, _ in reloaded.named_modules() if "lora" in n]
    assert reloaded.config.use_cache  # training switched the KV cache off; the export switches it back on
    # Logits of the merged weights equal the notebook's PEFT computation (x·W + s·x·A·B) to within 1e-5 of
    # their scale: the saved W + s·BA is rounded once to float32, and this deliberately high-gain random
    # model amplifies that to ~3e-5 on logits of size ~7 (the default tiny model's would be far smaller).
    # get_base_model(): the LoRA-injected model, without the autocast wrapper the trainer leaves on
    # the PeftModel's own forward (see test_in_memory_full_fine_tune_exports_and_verifies).
    seq = torch.tensor([ids[0].tolist() + result.token_ids])
    want = _logits(model.get_base_model(), seq)
    diff = (_logits(reloaded, seq) - want).abs().max().item()
    print(f"max logit difference {diff:.2g}, logit scale {want.abs().max().item():.2g}")
    assert diff <= 1e-5 * want.abs().max().item()
    # A user who relies on the exported files alone (template, generation_config.json's stop tokens)
    # gets the verified reply.
    assert _prompt_ids(exported_tok).tolist() == ids.tolist()
    assert _greedy(reloaded, ids) == result.token_ids
    assert "AutoModelForCausalLM.from_pretrained" in (folder / "README.md").read_text()


def test_in_notebook_model_keeps_its_adapter_after_a_merged_export(lora_run, tmp_path):
    import torch
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    model = lora_run.model
    ids = _prompt_ids(lora_run.tokenizer)
    before = _logits(model, ids)
    export_model(model, lora_run.tokenizer, tmp_path / "merged", merge=True)
    assert isinstance(model, PeftModel)
    lora_layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    assert lora_layers and not any(m.merged for m in lora_layers)
    assert torch.equal(_logits(model, ids), before)  # bit for bit: the merge happened on a copy
    with model.disable_adapter():
        assert not torch.allclose(_logits(model, ids), before)  # the adapter is still there to switch off


def test_verification_catches_a_corrupted_export(lora_run, tmp_path, monkeypatch):
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    original = export_mod._save_weights

    def save_then_corrupt(model, to, kind):
        out = original(model, to, kind)
        path = to / "model.safetensors"
        tensors = load_file(str(path))
        g = torch.Generator().manual_seed(1)
        tensors = {
            k: v + 0.3 * v.std() * torch.randn(v.shape, generator=g) if v.dim() == 2 else v for k, v in tensors.items()
        }
        save_file(tensors, str(path), metadata={"format": "pt"})
        return out

    monkeypatch.setattr(export_mod, "_save_weights", save_then_corrupt)
    folder = tmp_path / "corrupt"
    with pytest.raises(ExportError) as info:
        export_model(lora_run.model, lora_run.tokenizer, folder, merge=True)
    message = str(info.value)
    assert "\n" not in message and str(folder) in message and MARK_FAILED in message
    assert (folder / MARK_FAILED).is_file() and not (folder / MARK_INCOMPLETE).exists()
    # The position named is the first generated token where the corrupted folder and the notebook disagree.
    ids = _prompt_ids(lora_run.tokenizer)
    want = _greedy(lora_run.model, ids, eos_token_id=[2])
    got = _greedy(AutoModelForCausalLM.from_pretrained(folder).eval(), ids, eos_token_id=[2])
    first = next(i for i, (a, b) in enumerate(zip(got, want)) if a != b)
    assert re.search(rf"at generated token {first}: .*\(id {got[first]}\) instead of .*\(id {want[first]}\)", message)


def test_generation_config_stops_on_the_end_of_turn_token_and_the_eos(lively_model, tmp_path):
    from transformers import AutoModelForCausalLM, GenerationConfig

    from sft_magics.core.models import load_model

    loaded = load_model(lively_model)
    model, tokenizer = loaded.model, loaded.tokenizer
    im_end, endoftext = tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    # Like many base checkpoints: the EOS is <|endoftext|>, while the chat template ends turns with <|im_end|>.
    tokenizer.eos_token = "<|endoftext|>"
    model.generation_config.eos_token_id = endoftext
    assert end_of_turn_token(tokenizer) == im_end
    # A probe whose greedy reply without stop tokens says <|im_end|> within 32 tokens (about a third of
    # these do for this random model): the export's reply must stop right there.
    for probe in (f"Question {i}: what is the capital of France?" for i in range(20)):
        free = _greedy(model, _prompt_ids(tokenizer, probe), eos_token_id=None)
        if im_end in free[1:]:
            break
    else:
        pytest.fail("no probe makes the lively model say <|im_end|>")
    result = export_model(model, tokenizer, tmp_path / "full", merge=False, probe=probe)
    assert result.kind == "full" and not result.merged  # no adapter: the model's own weights
    saved = GenerationConfig.from_pretrained(tmp_path / "full")
    assert im_end in saved.eos_token_id and endoftext in saved.eos_token_id
    assert saved.pad_token_id == tokenizer.pad_token_id
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "full").generation_config.eos_token_id == saved.eos_token_id
    assert result.eos_token_id == saved.eos_token_id
    assert result.token_ids == free[: free.index(im_end, 1) + 1]  # stopped at the end-of-turn token


def test_in_memory_full_fine_tune_exports_and_verifies(runs_dir, tmp_path):
    """A model straight from the trainer keeps accelerate's autocast wrapper on its forward (TRL's
    SFTConfig defaults to bf16=True, on a CPU too): the export verifies against the weights' own
    computation, says so, and leaves the wrapper in place afterwards."""
    model = runs_dir[1]["full"].model
    forward = model.__dict__.get("forward")
    result = export_model(model, runs_dir[1]["full"].tokenizer, tmp_path / "full", merge=True)
    assert result.kind == "full" and result.logits_max_diff == 0.0  # the same weights, the same fp32 computation
    if "_original_forward" in model.__dict__:
        assert any("autocast" in n for n in result.notes)
    assert model.__dict__.get("forward") is forward


def test_refuses_a_non_empty_folder_unless_forced(lively_model, tmp_path, monkeypatch):
    from sft_magics.core.models import load_model

    loaded = load_model(lively_model)
    target = tmp_path / "taken"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match=re.escape(f"the export folder {target} is not empty")):
        export_model(loaded.model, loaded.tokenizer, target, merge=True)
    assert [p.name for p in target.iterdir()] == ["notes.txt"]  # untouched
    result = export_model(loaded.model, loaded.tokenizer, target, merge=True, force=True, max_new_tokens=4)
    assert not (target / "notes.txt").exists() and "config.json" in result.files
    # --force never deletes the folder the model came from, nor the working directory.
    with pytest.raises(ExportError, match="loaded from it"):
        export_model(loaded.model, loaded.tokenizer, lively_model, merge=True, force=True)
    monkeypatch.chdir(target)
    with pytest.raises(ExportError, match="working directory"):
        export_model(loaded.model, loaded.tokenizer, ".", merge=True, force=True)


def test_adapter_export_without_merge_points_at_a_real_base(lora_run, lively_model, tmp_path):
    from transformers import AutoModelForCausalLM

    result = export_model(lora_run.model, lora_run.tokenizer, tmp_path / "adapter", merge=False)
    folder = tmp_path / "adapter"
    assert result.kind == "adapter" and not result.merged and result.verified
    assert {"adapter_model.safetensors", "adapter_config.json", "chat_template.jinja", "generation_config.json"} <= set(
        result.files
    )
    assert "model.safetensors" not in result.files
    base = json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert base == result.base_model == lively_model
    assert "needs its base model" in (folder / "README.md").read_text()
    # transformers (with peft installed) loads base + adapter from the folder alone.
    reloaded = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert _greedy(reloaded, _prompt_ids(lora_run.tokenizer)) == result.token_ids


def test_relative_base_path_becomes_absolute(tmp_path, monkeypatch, lively_model):
    import shutil

    monkeypatch.chdir(tmp_path)
    shutil.copytree(lively_model, tmp_path / "base")
    config = tmp_path / "adapter_config.json"
    config.write_text(json.dumps({"base_model_name_or_path": "base", "r": 8}))
    assert export_mod._absolute_base(config) == str(tmp_path / "base")
    assert json.loads(config.read_text())["base_model_name_or_path"] == str(tmp_path / "base")


def test_export_by_run_name_through_the_magic(shell, runs_dir, tmp_path, capsys):
    from peft import PeftModel

    runs, results = runs_dir
    shell.run_line_magic("config", f"SftMagics.output_dir = {str(runs)!r}")
    target = tmp_path / "exported"
    out = shell.run_line_magic(
        "sft_export", f'lora --to {target} --merge --probe "Name the capital of Italy." -o exported'
    )
    result = shell.user_ns["exported"]
    assert out is result and result.kind == "merged" and result.verified
    assert result.probe == "Name the capital of Italy." and result.path == target
    assert (target / "model.safetensors").is_file() and not (target / "adapter_config.json").exists()
    shown = capsys.readouterr().out
    assert str(target) in shown and "identical" in shown and "Name the capital of Italy." in shown

    # The same run from its -o variable (the model in memory), and the full fine-tune by name.
    shell.user_ns["run"] = results["lora"]
    adapter = shell.run_line_magic("sft_export", f"run --to {tmp_path / 'adapter'} -o a")
    assert adapter.kind == "adapter" and isinstance(results["lora"].model, PeftModel)
    full = shell.run_line_magic("sft_export", f"full --to {tmp_path / 'full'} -o f")
    assert full.kind == "full" and (tmp_path / "full" / "model.safetensors").is_file()

    # Mistakes are one-line UsageErrors naming the problem.
    with pytest.raises(UsageError, match=re.escape(f"the export folder {target} is not empty")) as info:
        shell.run_line_magic("sft_export", f"lora --to {target} --merge")
    assert "\n" not in str(info.value)
    with pytest.raises(UsageError):
        shell.run_line_magic("sft_export", "lora --merge")  # --to is required
    (runs / "broken").mkdir()
    with pytest.raises(UsageError, match="no final/ folder"):
        shell.run_line_magic("sft_export", f"broken --to {tmp_path / 'x'}")
    with pytest.raises(UsageError, match="probe text is empty"):
        shell.run_line_magic("sft_export", f'lora --to {tmp_path / "y"} --probe " "')


def test_magic_reports_a_failed_verification_as_one_line(shell, runs_dir, tmp_path, monkeypatch):
    import torch

    runs, _ = runs_dir
    shell.run_line_magic("config", f"SftMagics.output_dir = {str(runs)!r}")
    from sft_magics.core.export import verify as export_verify

    original = export_verify._reload

    def reload_perturbed(to, dtype, device):
        model, tok = original(to, dtype, device)
        with torch.no_grad():
            model.get_input_embeddings().weight.mul_(-1.0)
        return model, tok

    monkeypatch.setattr(export_verify, "_reload", reload_perturbed)
    with pytest.raises(UsageError, match=r"verification failed: .* at generated token \d+") as info:
        shell.run_line_magic("sft_export", f"full --to {tmp_path / 'bad'}")
    assert "\n" not in str(info.value) and (tmp_path / "bad" / MARK_FAILED).is_file()


def test_summary_view_escapes_text(lora_run, tmp_path):
    from sft_magics.display._views import TableView

    result = export_model(
        lora_run.model, lora_run.tokenizer, tmp_path / "e", merge=True, probe="<b>hi</b> & bye", max_new_tokens=4
    )
    html = TableView("export", ["", ""], result.summary_rows()).to_html()
    assert "&lt;b&gt;hi&lt;/b&gt; &amp; bye" in html and "<b>hi</b>" not in html
    assert "<b>hi</b> & bye" in TableView("export", ["", ""], result.summary_rows()).to_text()
    # A reply's control characters and newlines are shown escaped, on one line.
    result.reply = "line one\nline\x1b[31m two"
    assert dict(result.summary_rows())["reply"] == "line one\\nline\\x1b[31m two"
