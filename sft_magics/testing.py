"""Tiny random-weight models for tests, benchmarks and quick experiments.

``make_tiny_model(folder)`` writes a complete model folder (Llama architecture, a byte-level BPE
tokenizer trained on a small corpus, a ChatML chat template like SmolLM2's, a generation config)
in well under a second, with no download. Its outputs are random, but every code path that a real
model takes — templates, masks, training, saving, generation — runs the same.
"""

from __future__ import annotations

from pathlib import Path

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = [
    "The capital of France is Paris. The capital of Italy is Rome.",
    "Extract the name, age and city as JSON: Alice is 34 and lives in Lisbon.",
    '{"name": "Alice", "age": 34, "city": "Lisbon"}',
    "You are a helpful assistant. What is two plus two? Four.",
    "system user assistant tool hello world 0123456789 {}[]:,\"'",
]


def make_tiny_model(
    folder: str | Path,
    *,
    seed: int = 0,
    hidden_size: int = 32,
    layers: int = 2,
    vocab_size: int = 320,
    base: bool = False,
    tokenizer_from: str | Path | None = None,
) -> Path:
    """Write a tiny random Llama model and tokenizer to ``folder`` and return its path. ``base=True``:
    a *base* model, as a pretrained checkpoint is before chat tuning: no chat template, no chat
    tokens, ``<|endoftext|>`` as its only special token (like SmolLM2-135M on the Hub).
    ``tokenizer_from``: a model folder whose tokenizer (and chat template) the tiny model uses
    instead of the trained one; llama.cpp's converter only knows real tokenizers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if tokenizer_from is not None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_from))
        tokenizer.save_pretrained(folder)
        return _write_model(folder, tokenizer, seed=seed, hidden_size=hidden_size, layers=layers)
    specials = ["<|endoftext|>"] if base else ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>" if base else "<|im_start|>",
        eos_token="<|endoftext|>" if base else "<|im_end|>",
        pad_token="<|endoftext|>" if base else "<|im_end|>",
        unk_token="<|endoftext|>",
    )
    if not base:
        tokenizer.chat_template = CHATML_TEMPLATE
    tokenizer.save_pretrained(folder)
    return _write_model(folder, tokenizer, seed=seed, hidden_size=hidden_size, layers=layers)


def _write_model(folder: Path, tokenizer, *, seed: int, hidden_size: int, layers: int) -> Path:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(folder)
    return folder
