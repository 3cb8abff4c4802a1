"""An export is verified before it is called done: the folder is reloaded with plain transformers
(``AutoModelForCausalLM`` / ``AutoTokenizer`` only), the probe is rendered through the exported
chat template, and the reloaded model must generate the notebook model's greedy answer, token for
token (logits compared too, to explain a difference)."""

from __future__ import annotations

import contextlib
from pathlib import Path

from ..errors import ExportError, SftError, one_line
from ..template.render import apply_chat_template
from ..template.tokens import common_prefix

# -- verifying ----------------------------------------------------------------------------------------


def _reload(to: Path, dtype, device):
    """Load the folder the way a user of the export will: plain transformers, nothing of ours.
    (An adapter folder loads its base model and attaches the adapter through transformers' peft
    integration.)"""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .._quiet import quiet_libraries

    with quiet_libraries():
        model = AutoModelForCausalLM.from_pretrained(str(to), dtype=dtype)
    return model.to(device).eval(), AutoTokenizer.from_pretrained(str(to))


@contextlib.contextmanager
def plain_forward(model, notes: list[str]):
    """A model straight out of a Trainer still carries accelerate's mixed-precision wrapper on its
    ``forward`` (autocast + outputs cast to fp32; TRL's SFTConfig defaults to ``bf16=True``, on a
    CPU too). That is a training-time setting, not part of the weights: verify against what the
    weights compute, with the wrapper set aside for the duration, then put it back as it was."""
    # (A PeftModel's own forward does not matter: its generate() runs the wrapped model's forward.)
    wrapped = [m for m in model.modules() if "_original_forward" in m.__dict__ and not is_peft_model(m)]
    saved = [(m, m.__dict__.get("forward")) for m in wrapped]
    if wrapped:
        notes.append(
            "the notebook model still carries the trainer's mixed-precision (autocast) wrapper; "
            "verified against its plain forward, which is what the exported weights compute"
        )
    try:
        for m in wrapped:
            m.forward = m.__dict__["_original_forward"]
        yield
    finally:
        for m, forward in saved:
            m.forward = forward


def greedy_config(max_new_tokens: int, eos_token_id, pad_token_id, bos_token_id=None):
    """Greedy decoding that returns each step's logits, for comparing two runtimes token by token."""
    from transformers import GenerationConfig

    return GenerationConfig(
        do_sample=False,
        num_beams=1,
        max_new_tokens=max_new_tokens,
        return_dict_in_generate=True,
        output_logits=True,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        bos_token_id=bos_token_id,
    )


def greedy(model, inputs, config):
    import torch

    with torch.no_grad():
        out = model.generate(**inputs, generation_config=config)
    ids = out.sequences[0, inputs["input_ids"].shape[1] :].tolist()
    logits = torch.stack([step[0].float() for step in out.logits]).cpu()
    return ids, logits


def verify_export(model, tokenizer, to: Path, probe: str, max_new_tokens: int) -> dict:
    """Reload ``to``, render the probe through the exported template, and compare greedy token ids
    of the reloaded and the in-notebook model, token for token."""
    import gc

    from transformers import GenerationConfig

    param = next(model.parameters())
    try:
        reloaded, exported_tok = _reload(to, param.dtype, param.device)
        exported = GenerationConfig.from_pretrained(str(to))
    except Exception as err:
        raise ExportError(
            f"the export in {to} does not reload with transformers: {type(err).__name__}: {one_line(err, 240)}"
        ) from None
    messages = [{"role": "user", "content": probe}]

    try:
        prompt = apply_chat_template(exported_tok, messages, tokenize=False, add_generation_prompt=True)
        notebook_prompt = apply_chat_template(tokenizer, messages, tokenize=False, add_generation_prompt=True)
    except SftError as err:
        raise ExportError(f"the chat template does not render the probe: {err}") from None
    if prompt != notebook_prompt:
        raise ExportError("the exported chat template renders the probe differently from the notebook tokenizer's")
    inputs = exported_tok(prompt, return_tensors="pt", add_special_tokens=False)
    if inputs["input_ids"][0].tolist() != tokenizer(prompt, add_special_tokens=False)["input_ids"]:
        raise ExportError("the exported tokenizer encodes the probe differently from the notebook tokenizer")
    # The same greedy settings for both, stop tokens from the exported generation config.
    config = greedy_config(max_new_tokens, exported.eos_token_id, exported.pad_token_id, exported.bos_token_id)
    inputs = {k: v.to(param.device) for k, v in inputs.items()}
    was_training = model.training
    model.eval()  # dropout off (LoRA dropout too), as in any inference
    notes: list[str] = []
    try:
        with plain_forward(model, notes):
            want, want_logits = greedy(model, inputs, config)
        got, got_logits = greedy(reloaded, inputs, config)
    finally:
        model.train(was_training)
        del reloaded
        gc.collect()
    if got != want:
        i = common_prefix(got, want)

        def token(ids: list[int]) -> str:
            return f"{exported_tok.decode([ids[i]])!r} (id {ids[i]})" if i < len(ids) else "the end of the reply"

        raise ExportError(
            f"export verification failed: the reloaded model's reply differs from the notebook model's at generated "
            f"token {i}: {token(got)} instead of {token(want)}"
        )
    n = min(len(want_logits), len(got_logits))
    diff = float((got_logits[:n] - want_logits[:n]).abs().max()) if n else 0.0
    return {
        "prompt": prompt,
        "ids": want,
        "reply": exported_tok.decode(want, skip_special_tokens=True),
        "logits_max_diff": diff,
        "notes": notes,
    }


def is_peft_model(model) -> bool:
    """A peft ``PeftModel`` (False when peft is not installed)."""
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)
