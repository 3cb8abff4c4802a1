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
  elements, at 4 bytes (2 in mixed precision); gradient checkpointing keeps one hidden state per layer
  and recomputes one layer at a time. TRL computes the loss through a chunked, fused LM head, so the
  full logits are never kept;
- **overhead**: the trainer, the prepared data, allocator slack.

The coefficients were fitted on this project's CPU, in fp32 with LoRA (our defaults), and checked
against measured peaks (``benchmarks/bench_fit.py``; README "Numbers"), not derived from first
principles alone: treat the estimate as +-25%, which is why "fits" needs a 10% margin.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

GIB = 1024**3
# Elements kept per token and layer: ACT_HIDDEN x hidden + ACT_MLP x intermediate + ACT_KV x key/value
# width (norms, q/k/v/o and MLP outputs, residuals, each LoRA module's dropped-out input and mask).
# Fitted to SmolLM2-135M's measured 4.18 MB per token over 30 layers in fp32 (34,800 elements per
# token and layer; 32 x 576 + 10 x 1536 + 4 x 192 = 34,560), in the 2 : 5 ratio of the tensors counted.
ACT_HIDDEN = 32.0
ACT_MLP = 10.0
ACT_KV = 4.0
TOKEN_BYTES = (
    24 * 1024
)  # per token outside the layers (inputs, labels, the chunked LM head), measured on the tiny model
OVERHEAD = 60 * 1024**2  # the trainer, the prepared rows, allocator slack (measured: tiny model, fp32 CPU)
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
    from .data import sample_data
    from .stats import data_stats

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
    """The peak memory of training plan ``p`` (a :class:`core.config.Plan`) on a model with
    ``model_config`` (transformers' config), ``trainable`` of ``total`` parameters."""
    args = p.sft_args
    batch = int(args.get("per_device_train_batch_size", 8))
    mixed = bool(args.get("bf16") or args.get("fp16"))
    weights = int(total * _bytes_per_weight(p.device, p.dtype, p.spec))
    state = trainable * 12
    if p.lora is None and p.device != "cpu" and not mixed:
        state += trainable * 4  # fp32 master weights of a half-precision full fine-tune
    act = activations(model_config, batch, length, mixed=mixed, checkpointing=bool(args.get("gradient_checkpointing")))
    est = FitEstimate(p.device, batch, length, length_source, weights, state, act, OVERHEAD, free)
    return est if est.fits is not False else _with_advice(est, p, model_config)


def activations(config, batch: int, length: int, *, mixed: bool = False, checkpointing: bool = False) -> int:
    """Bytes the forward pass keeps for the backward at ``batch`` x ``length`` tokens."""
    cfg = getattr(config, "text_config", None) or config
    hidden = int(cfg.hidden_size)
    inter = int(getattr(cfg, "intermediate_size", None) or 4 * hidden)
    layers = int(cfg.num_hidden_layers)
    heads = int(getattr(cfg, "num_attention_heads", 1) or 1)
    kv = int(getattr(cfg, "num_key_value_heads", None) or heads) * (hidden // heads)
    per_layer_token = ACT_HIDDEN * hidden + ACT_MLP * inter + ACT_KV * kv
    size = 2 if mixed else 4
    tokens = batch * length
    if checkpointing:  # one hidden state per layer kept, one layer's activations recomputed at a time
        return int(tokens * (size * (layers * hidden + per_layer_token) + TOKEN_BYTES))
    return int(tokens * (size * layers * per_layer_token + TOKEN_BYTES))


def _with_advice(est: FitEstimate, p, model_config) -> FitEstimate:
    """What to change so that it fits: the largest batch that does (gradient accumulation keeping
    the effective batch), else a shorter max_length, gradient checkpointing, LoRA."""
    budget = MARGIN * est.free - (est.weights + est.training_state + est.overhead)
    args = p.sft_args
    accum = int(args.get("gradient_accumulation_steps", 1))
    mixed = bool(args.get("bf16") or args.get("fp16"))
    ckpt = bool(args.get("gradient_checkpointing"))
    advice = []
    if budget <= 0:
        fixed = (est.weights + est.training_state + est.overhead) / GIB
        advice.append(
            f"weights, optimizer state and overhead alone (~{fixed:.2f} GiB) leave no room for a batch: "
            + (
                "use LoRA (lora: {r: 16}), a smaller model, or a GPU"
                if p.lora is None
                else "a smaller model, or a GPU (with load_in_4bit: true)"
            )
        )
        return FitEstimate(**{**est.__dict__, "advice": tuple(advice)})
    per_row = activations(model_config, 1, est.length, mixed=mixed, checkpointing=ckpt)
    fits_batch = int(budget // max(1, per_row))
    if fits_batch >= 1:
        new_accum = math.ceil(est.batch_size * accum / fits_batch)
        advice.append(
            f"per_device_train_batch_size: {fits_batch} with gradient_accumulation_steps: {new_accum} "
            f"(the same {est.batch_size * accum} rows per step)"
        )
    else:
        for length in (4096, 2048, 1024, 512, 256, 128):
            if length < est.length and activations(model_config, 1, length, mixed=mixed, checkpointing=ckpt) <= budget:
                advice.append(f"max_length: {length} with per_device_train_batch_size: 1 (longer rows are cut)")
                break
    if not ckpt and activations(model_config, est.batch_size, est.length, mixed=mixed, checkpointing=True) <= budget:
        advice.append("gradient_checkpointing: true (recomputes activations: slower, much less memory)")
    return FitEstimate(**{**est.__dict__, "advice": tuple(advice)})
