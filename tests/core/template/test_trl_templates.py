"""Every chat template TRL ships: the tokens we mark as trained equal the labels TRL builds itself.

For templates TRL can mask assistant turns of (generation markers, or a training variant TRL
knows), the comparison is on a two-turn conversation with ``assistant_only_loss=True``. For the
others TRL has no assistant-only mask, so the comparison is TRL's prompt/completion rule on a
single-turn conversation — where "assistant-only" and "completion-only" mean the same tokens.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trl

TEMPLATES = sorted(p for p in (Path(trl.__file__).parent / "chat_templates").glob("*.jinja"))
TWO_TURNS = [
    {"role": "user", "content": "What is two plus two?"},
    {"role": "assistant", "content": "Four."},
    {"role": "user", "content": "And three plus three?"},
    {"role": "assistant", "content": "Six."},
]


@pytest.fixture(scope="module")
def base(tiny_model):
    from sft_magics.core.models import load_model

    return load_model(tiny_model)


def _tokenizer(base, template: str):
    import copy

    tok = copy.deepcopy(base.tokenizer)
    tok.chat_template = template
    return tok


def _trl_labels(base, tok, rows, tmp_path, **config):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    trainer = SFTTrainer(
        model=base.model,
        processing_class=tok,
        train_dataset=Dataset.from_list(rows),
        args=SFTConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", max_length=None, **config),
    )
    row = trainer.train_dataset[0]
    return list(row["input_ids"]), list(row["labels"])


def test_trl_ships_templates():
    assert len(TEMPLATES) > 40


@pytest.mark.parametrize("path", TEMPLATES, ids=[p.stem for p in TEMPLATES])
def test_trained_tokens_equal_trls_labels(path, base, tmp_path):
    from sft_magics.core.template.tokens import (
        MASK_MARKERS,
        MASK_TRL_TEMPLATE,
        choose_mask_method,
        tokenize_row,
    )

    tok = _tokenizer(base, path.read_text())
    conversation = TWO_TURNS
    try:
        tok.apply_chat_template(conversation, tokenize=False)
    except Exception:
        conversation = [{**m, "content": [{"type": "text", "text": m["content"]}]} for m in TWO_TURNS]
        tok.apply_chat_template(conversation, tokenize=False)
    method = choose_mask_method(tok)
    if method[0] in (MASK_MARKERS, MASK_TRL_TEMPLATE):
        ours = tokenize_row(tok, {"messages": conversation}, "messages", method=method)
        ids, labels = _trl_labels(base, tok, [{"messages": conversation}], tmp_path, assistant_only_loss=True)
    else:
        single = conversation[:2]
        ours = tokenize_row(tok, {"messages": single}, "messages", method=method)
        ids, labels = _trl_labels(base, tok, [{"prompt": single[:1], "completion": single[1:]}], tmp_path)
    assert ours.input_ids == ids
    assert ours.labels == labels
    assert ours.trained_count > 0
