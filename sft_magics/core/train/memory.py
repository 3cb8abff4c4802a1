"""The fit check: will this training fit in memory? An estimate of the peak memory training adds to
the process, part by part, for the device it will use, and what to change when it will not fit.

Parts (bytes):

- **weights**: every parameter at the dtype it is loaded in (fp32 on a CPU; the GPU's half
  precision; ~0.56 bytes for 4-bit, ~1.1 for 8-bit, counting their quantization constants);
- **training state**: for each *trainable* parameter its gradient and AdamW's two moments, in
  fp32 (12 bytes), and an fp32 master copy when a full fine-tune trains half-precision weights;
- **activations**: what the forward pass keeps for the backward, per layer and token, at the
  planned batch and length (the longest row, capped at ``max_length``; ``max_length`` itself with
  packing): ``ACT_HIDDEN`` x hidden + ``ACT_MLP`` x intermediate + ``ACT_KV`` x the key/value width
  elements of 4 bytes, times the measured share kept in mixed precision, with gradient
  checkpointing and in a full fine-tune (no LoRA inputs). TRL computes the loss through a chunked,
  fused LM head, so the full logits are never kept;
- **overhead**: the trainer, the prepared data, allocator slack.

The coefficients were fitted on this project's CPU (``benchmarks/bench_fit.py`` marks which
configuration fitted which coefficient and checks the estimate on held-out ones; README
"Performance and memory"), not derived from first principles alone: treat the estimate as +-25%,
which is why "fits" needs a 10% margin. On a GPU they are unchecked until one is lent.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

GIB = 1024**3
# Elements kept per token and layer: ACT_HIDDEN x hidden + ACT_MLP x intermediate + ACT_KV x key/value
# width (norms, q/k/v/o and MLP outputs, residuals, each LoRA module's dropped-out input and mask).
# Fitted to SmolLM2-135M's measured 4.18 MB per token over 30 layers in fp32 (34,800 elements per
# token and layer; 32 x 576 + 10 x 1536 + 4 x 192 = 34,560), in the 2 : 5 ratio of the tensors counted.
ACT_HIDDEN = 32.0
ACT_MLP = 10.0
ACT_KV = 4.0
TOKEN_BYTES = 16 * 1024  # per token outside the layers (inputs, labels, the chunked LM head): tiny model
OVERHEAD = 50 * 1024**2  # the trainer, the prepared rows, allocator slack (measured: tiny model, fp32 CPU)
# Shares of the fp32 LoRA activations, measured on SmolLM2-135M (CPU): bf16 autocast keeps fp32 copies
# next to the bf16 ones (0.76 at batch 8 x 128; it also caches a bf16 copy of the weights); gradient
# checkpointing as transformers + PEFT do it here kept 0.53 (8 x 256; far more than one hidden state
# per layer: measured, not derived); a full fine-tune keeps no LoRA inputs (0.5 at 2 x 128).
MIXED_SHARE = 0.76
CHECKPOINT_SHARE = 0.53
FULL_SHARE = 0.5
MARGIN = 0.9  # fits when the estimate is at most this share of the free memory
LENGTH_SAMPLE = 1000  # rows whose length is measured when the data has more


def _bytes_per_weight(device: str, dtype, spec) -> float:
    if getattr(spec, "load_in_4bit", False):
        return 0.56
    if getattr(spec, "load_in_8bit", False):
        return 1.1
    return float(getattr(dtype, "itemsize", 4)) if device != "cpu" else 4.0


@dataclass(frozen=True)
class FitEstimate:
    """Peak memory training adds, part by part, and the memory free for it."""

    device: str
    batch_size: int
    length: int
    length_source: str  # how the length was found ("the longest of 500 rows", "max_length (packing)", ...)
    weights: int
    training_state: int
    activations: int
    overhead: int
    free: int | None  # bytes free on the device now (None: unknown)
    advice: tuple[str, ...] = field(default_factory=tuple)

    @property
    def total(self) -> int:
        return self.weights + self.training_state + self.activations + self.overhead

    @property
    def fits(self) -> bool | None:
        return None if self.free is None else self.total <= MARGIN * self.free

    def as_dict(self) -> dict:
        return {
            "estimate_bytes": self.total,
            "free_bytes": self.free,
            "fits": self.fits,
            "parts": {k: getattr(self, k) for k in ("weights", "training_state", "activations", "overhead")},
            "batch_size": self.batch_size,
            "length": self.length,
            "length_source": self.length_source,
            "advice": list(self.advice),
        }

    def summary(self) -> str:
        where = "GPU memory" if self.device != "cpu" else "memory"
        parts = (
            f"weights {self.weights / GIB:.2f} + gradients and optimizer {self.training_state / GIB:.2f} + "
            f"activations {self.activations / GIB:.2f} (batch {self.batch_size} x {self.length} tokens, "
            f"{self.length_source}) + overhead {self.overhead / GIB:.2f}"
        )
        head = f"fit check: ~{self.total / GIB:.2f} GiB of {where} at peak ({parts})"
        if self.free is None:
            return f"{head}; free {where} unknown"
        verdict = "fits" if self.fits else "will NOT fit"
        return f"{head}; {self.free / GIB:.1f} GiB free now: {verdict}"


def fit_check(p) -> tuple[int, int, FitEstimate]:
    """Trainable and total parameters of the model plan ``p`` would train (loaded once, as
    training loads it), and the fit check for it on the plan's device."""
    import gc

    from .._quiet import quiet_libraries
    from .model import trainable_model

    with quiet_libraries():  # as training loads it, without the libraries' deprecation noise
        model, tokenizer = trainable_model(p)
    trainable = sum(x.numel() for x in model.parameters() if x.requires_grad)
    total = sum(x.numel() for x in model.parameters())
    config = model.config
    del model  # the estimate is of what training adds: measure the free memory without this copy
    gc.collect()
    if p.device != "cpu":
        import torch

        torch.cuda.empty_cache()  # back to the driver, or mem_get_info would count the model as used
    length, source = planned_length(p, tokenizer)
    return (
        trainable,
        total,
        estimate(
            p, config, trainable=trainable, total=total, length=length, length_source=source, free=free_memory(p.device)
        ),
    )


def free_memory(device: str) -> int | None:
    """Bytes free for training on ``device`` now: CUDA's free memory, else the OS's available memory."""
    if device != "cpu":
        import torch

        free, _ = torch.cuda.mem_get_info()
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:
        return None


def planned_length(p, tokenizer) -> tuple[int, str]:
    """The longest sequence a batch will hold: ``max_length`` when packing fills it, else the longest
    row (tokens, as prepared for training) capped at ``max_length``; measured on a sample of
    ``LENGTH_SAMPLE`` rows when there are more."""
    from ..data.load import sample_data
    from ..template.doctor import data_stats

    cap = p.sft_args.get("max_length")
    if p.sft_args.get("packing") and cap:
        return int(cap), "max_length (packing fills it)"
    data = p.train_data
    sample = sample_data(data, LENGTH_SAMPLE) if len(data) > LENGTH_SAMPLE else data
    totals = data_stats(sample, tokenizer).total_tokens or [1]
    longest = max(totals)
    where = f"the longest of {len(sample):,} sampled rows" if sample is not data else "the longest row"
    if cap and longest > cap:
        return int(cap), f"max_length; {where} has {longest}"
    return int(longest), where


def estimate(
    p,
    model_config,
    *,
    trainable: int,
    total: int,
    length: int,
    length_source: str = "",
    free: int | None = None,
) -> FitEstimate:
    """The peak memory of training plan ``p`` (a :class:`core.train.config.Plan`) on a model with
    ``model_config`` (transformers' config), ``trainable`` of ``total`` parameters."""
    batch = int(p.sft_args.get("per_device_train_batch_size", 8))
    shape = _shape(p)
    per_weight = _bytes_per_weight(p.device, p.dtype, p.spec)
    weights = int(total * per_weight)
    # A gradient and AdamW's two moments per trained parameter, in its dtype: fp32 for LoRA adapters
    # (PEFT keeps them in fp32) and on a CPU; a GPU's full fine-tune trains the half-precision weights.
    state = int(trainable * 3 * (per_weight if p.lora is None and p.device != "cpu" else 4))
    if shape["mixed"] and p.device == "cpu":
        weights += total * 2  # autocast's bf16 copy of the fp32 weights
    act = activations(model_config, batch, length, **shape)
    est = FitEstimate(p.device, batch, length, length_source, weights, state, act, OVERHEAD, free)
    return est if est.fits is not False else _with_advice(est, p, model_config)


def _shape(p) -> dict:
    """What, besides batch and length, decides the activations' size: ``activations``' keywords."""
    args = p.sft_args
    return dict(
        mixed=bool(args.get("bf16") or args.get("fp16")),
        checkpointing=bool(args.get("gradient_checkpointing")),
        lora=p.lora is not None,
    )


def activations(
    config, batch: int, length: int, *, mixed: bool = False, checkpointing: bool = False, lora: bool = True
) -> int:
    """Bytes the forward pass keeps for the backward at ``batch`` x ``length`` tokens."""
    cfg = getattr(config, "text_config", None) or config
    hidden = int(cfg.hidden_size)
    inter = int(getattr(cfg, "intermediate_size", None) or 4 * hidden)
    layers = int(cfg.num_hidden_layers)
    heads = int(getattr(cfg, "num_attention_heads", 1) or 1)
    head_dim = int(getattr(cfg, "head_dim", None) or hidden // heads)
    kv = int(getattr(cfg, "num_key_value_heads", None) or heads) * head_dim
    per_token = 4 * layers * (ACT_HIDDEN * hidden + ACT_MLP * inter + ACT_KV * kv)
    share = (
        (MIXED_SHARE if mixed else 1.0) * (CHECKPOINT_SHARE if checkpointing else 1.0) * (1.0 if lora else FULL_SHARE)
    )
    return int(batch * length * (share * per_token + TOKEN_BYTES))


def _with_advice(est: FitEstimate, p, model_config) -> FitEstimate:
    """What to change so that it fits: the largest batch that does with the same rows per optimizer
    step (gradient accumulation makes up the rest), else a shorter max_length, gradient
    checkpointing; when not even that fits, the model itself (LoRA, QLoRA, a smaller model)."""
    budget = MARGIN * est.free - (est.weights + est.training_state + est.overhead)
    rows = est.batch_size * int(p.sft_args.get("gradient_accumulation_steps", 1))
    shape = _shape(p)
    advice = []
    if budget > 0:
        fits_batch = int(budget // max(1, activations(model_config, 1, est.length, **shape)))
        if fits_batch >= 1:
            batch = max(d for d in range(1, min(fits_batch, rows) + 1) if rows % d == 0)
            advice.append(
                f"per_device_train_batch_size: {batch} with gradient_accumulation_steps: {rows // batch} "
                f"(the same {rows} rows per step)"
            )
        else:
            for length in (4096, 2048, 1024, 512, 256, 128):
                if length < est.length and activations(model_config, 1, length, **shape) <= budget:
                    advice.append(f"max_length: {length} with per_device_train_batch_size: 1 (longer rows are cut)")
                    break
        checkpointed = activations(model_config, est.batch_size, est.length, **{**shape, "checkpointing": True})
        if not shape["checkpointing"] and checkpointed <= budget:
            advice.append("gradient_checkpointing: true (recomputes activations: slower, much less memory)")
    if not advice:
        fixed = (est.weights + est.training_state + est.overhead) / GIB
        if p.lora is None:
            what = "use LoRA (lora: {r: 16}) or a smaller model"
        elif p.device == "cpu":
            what = "a smaller model, or a machine with more memory (or a GPU)"
        elif not (p.spec.load_in_4bit or p.spec.load_in_8bit):
            what = "load_in_4bit: true (QLoRA) or a smaller model"
        else:
            what = "a smaller model, or a GPU with more memory"
        advice.append(f"weights, optimizer state and overhead (~{fixed:.2f} GiB) leave too little room: {what}")
    return replace(est, advice=tuple(advice))
