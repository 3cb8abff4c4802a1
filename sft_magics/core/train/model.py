"""The model a plan trains: loaded (quantized where asked, on the plan's device and dtype), given
the chat template it trains with (new tokens added, embeddings resized), and the LoRA config that
trains the new tokens' rows too. Used by training and by ``--dry-run``'s fit check (core/train/memory.py)."""

from __future__ import annotations

from ..errors import ConfigError
from .config import _lora_config
from .plan import Plan


def _load_for_training(p: Plan, trust_remote_code: bool = False):
    from ..models import load_model

    quant = None
    if p.spec.load_in_4bit or p.spec.load_in_8bit:
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise ConfigError("quantized training needs bitsandbytes: pip install bitsandbytes") from None
        import torch
        from transformers import BitsAndBytesConfig

        q = p.spec.quantization
        quant = (
            BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type=q.get("bnb_4bit_quant_type", "nf4"),
                bnb_4bit_use_double_quant=q.get("use_bnb_nested_quant", True),
                bnb_4bit_compute_dtype=torch.bfloat16,
                bnb_4bit_quant_storage=q.get("bnb_4bit_quant_storage", "uint8"),
            )
            if p.spec.load_in_4bit
            else BitsAndBytesConfig(load_in_8bit=True)
        )
    kwargs = dict(p.spec.model_kwargs)
    trust = bool(kwargs.pop("trust_remote_code", trust_remote_code))
    dtype = kwargs.pop("dtype", None)
    # Full-precision weights on the CPU; on CUDA the recipe's dtype, else the hardware's half
    # precision (the trainer's autocast handles mixed precision).
    if p.device == "cpu" or dtype == "auto":
        dtype = "fp32" if p.device == "cpu" else None
    return load_model(
        p.spec.model, device=p.device, dtype=dtype, quantization_config=quant, trust_remote_code=trust, **kwargs
    )


def prepare_model(p: Plan):
    """The model and tokenizer the plan trains, with its chat template applied (new tokens added,
    embeddings resized), and the LoRA config (None: a full fine-tune), whose
    ``trainable_token_indices`` train the new tokens' rows."""
    loaded = _load_for_training(p)
    model, tokenizer = loaded.model, loaded.tokenizer
    lora = dict(p.lora) if p.lora else None
    if p.template is not None:  # the template is a training choice: set before the data is tokenized
        from ..template.chat_templates import apply_training_template

        model, tokenizer, added = apply_training_template(model, tokenizer, p.template)
        if lora is not None and added:
            # The new tokens' rows must learn (or the model never learns to end a turn). PEFT's
            # trainable_token_indices would train just those rows, but TRL 1.16's fused LM head reads
            # lm_head.bias, which PEFT's TrainableTokensWrapper (on a tied lm_head) does not have:
            # train the embeddings and the head in full instead (a bigger adapter, same effect).
            lora.setdefault("modules_to_save", [])
            lora["modules_to_save"] = [
                *lora["modules_to_save"],
                *[m for m in ("embed_tokens", "lm_head") if m not in lora["modules_to_save"]],
            ]
    settle_tokenizer(model, tokenizer, p.sft_args)
    return model, tokenizer, lora


def settle_tokenizer(model, tokenizer, sft_args) -> None:
    """The tokenizer as TRL's ``SFTTrainer`` will leave it, settled before any row is prepared (rows
    prepared earlier would train an end token the saved model does not stop on): ``eos_token`` and
    ``pad_token`` set, and mirrored onto the model's configs as TRL does (the new EOS joins the
    generation config's stop tokens). TRL's own changes are then no-ops."""
    vocab = tokenizer.get_vocab()
    for key in ("eos_token", "pad_token"):
        token = sft_args.get(key)
        if token is not None and token not in vocab:
            raise ConfigError(
                f"key '{key}': {token!r} is not a token of this model's tokenizer; use one it has "
                f"(its EOS is {tokenizer.eos_token!r}), or add it with chat_template"
            )
    text_config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    generation = getattr(model, "generation_config", None)
    if sft_args.get("eos_token") is not None:
        tokenizer.eos_token = sft_args["eos_token"]
        text_config.eos_token_id = tokenizer.eos_token_id
        if generation is not None:
            old = generation.eos_token_id
            old = [] if old is None else [old] if isinstance(old, int) else list(old)
            if tokenizer.eos_token_id not in old:
                generation.eos_token_id = [tokenizer.eos_token_id, *old]
    pad = sft_args.get("pad_token") or tokenizer.pad_token or tokenizer.eos_token
    if pad is not None:
        tokenizer.pad_token = pad
        text_config.pad_token_id = tokenizer.pad_token_id
        if generation is not None:
            generation.pad_token_id = tokenizer.pad_token_id


def trainable_model(p: Plan):
    """The model the plan trains, with its LoRA adapter attached when it has one (what ``--dry-run``
    counts), and the tokenizer."""
    model, tokenizer, lora = prepare_model(p)
    if lora:
        from peft import get_peft_model

        model = get_peft_model(model, _lora_config(lora))
    return model, tokenizer
