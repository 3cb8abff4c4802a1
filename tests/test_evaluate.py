"""Metrics on hand-computed values; batched generation equals one-by-one; adapter toggling."""

from __future__ import annotations

import pytest

from sft_magics.core.evaluate import (
    adapter_disabled, exact_match, generate, json_fields, json_match, json_valid, render_prompts, stop_token_ids,
)

REF = '{"name": "Ana", "age": 34, "city": "Lisbon"}'


@pytest.mark.parametrize(
    "pred,em,valid,match,fields",
    [
        (REF, 1.0, 1.0, 1.0, 1.0),
        ('  {"name": "Ana", "age": 34, "city": "Lisbon"}\n', 1.0, 1.0, 1.0, 1.0),
        ('{"city": "Lisbon", "age": 34, "name": "Ana"}', 0.0, 1.0, 1.0, 1.0),  # key order: not exact, same JSON
        ('{"name": "Ana", "age": "34", "city": "Lisbon"}', 0.0, 1.0, 0.0, 2 / 3),  # age as a string
        ('{"name": "Bo"}', 0.0, 1.0, 0.0, 0.0),
        ("Ana is 34", 0.0, 0.0, 0.0, 0.0),
        ('[1, 2]', 0.0, 1.0, 0.0, 0.0),
    ],
)
def test_metrics_on_hand_computed_values(pred, em, valid, match, fields):
    assert exact_match(pred, REF) == em
    assert json_valid(pred, REF) == valid
    assert json_match(pred, REF) == match
    assert json_fields(pred, REF) == pytest.approx(fields)


def test_batched_generation_equals_one_by_one(tiny_model):
    from sft_magics.core.models import load_model

    loaded = load_model(tiny_model)
    prompts = [[{"role": "user", "content": "hi " * n}] for n in (1, 5, 9, 2)]  # different lengths: padding matters
    batched = generate(loaded.model, loaded.tokenizer, prompts, max_new_tokens=6, batch_size=4)
    single = [generate(loaded.model, loaded.tokenizer, [p], max_new_tokens=6, batch_size=1)[0] for p in prompts]
    assert batched == single
    assert loaded.tokenizer.padding_side == "right"  # restored after generating


def test_prompt_uses_the_models_template_and_stop_tokens(tiny_model):
    from sft_magics.core.models import load_model

    loaded = load_model(tiny_model)
    text = render_prompts(loaded.tokenizer, [[{"role": "user", "content": "hi"}]])[0]
    assert text.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    assert stop_token_ids(loaded.model, loaded.tokenizer) == [loaded.tokenizer.convert_tokens_to_ids("<|im_end|>")]


def test_adapter_disabled_gives_the_base_models_outputs(tiny_model):
    import torch
    from peft import LoraConfig, get_peft_model

    from sft_magics.core.models import load_model

    base = load_model(tiny_model)
    ids = base.tokenizer("hello world", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        base_logits = base.model(ids).logits.clone()
    peft_model = get_peft_model(load_model(tiny_model).model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    with torch.no_grad():
        tuned_logits = peft_model(ids).logits
        with adapter_disabled(peft_model) as m:
            disabled_logits = m(ids).logits
    assert not torch.allclose(tuned_logits, base_logits)
    assert torch.allclose(disabled_logits, base_logits)
