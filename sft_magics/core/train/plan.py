"""The plan: a TrainSpec resolved before training — data loaded and validated, every value checked, device and precision chosen, steps counted. What --dry-run shows and what training trains."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ..errors import ConfigError, one_line
from .checks import check_sft_values
from .config import DEFAULT_LORA, DEFAULT_SFT, TrainSpec, sft_config_fields


def planned_steps(rows: int, sft_args: Mapping[str, Any], world_size: int = 1) -> int:
    """Optimizer steps the run will take (max_steps wins; else epochs x steps per epoch)."""
    import math

    if (sft_args.get("max_steps") or -1) > 0:
        return int(sft_args["max_steps"])
    batch = int(sft_args.get("per_device_train_batch_size", 8)) * world_size
    accum = int(sft_args.get("gradient_accumulation_steps", 1))
    per_epoch = max(1, math.ceil(math.ceil(rows / batch) / accum))
    return int(math.ceil(per_epoch * float(sft_args.get("num_train_epochs", 1))))


@dataclass
class Plan:
    """Everything resolved before training: what --dry-run shows."""

    spec: TrainSpec
    sft_args: dict
    lora: dict | None
    device: str
    dtype: Any
    train_data: Any
    eval_data: Any
    steps: int
    template: tuple[str, Any] | None = None  # the chat template to train with, resolved (template/chat_templates.py)
    notes: list[str] = field(default_factory=list)  # how recipe keys were read, and choices made here
    watch: Any = None  # train.watch.Watch: answers generated at each evaluation, early stopping
    answers: Any = None  # train.watch.AnswerWatch, when answers are generated
    precision: str = ""  # which precision and why (_precision, below)

    def config(self) -> dict:
        """The resolved config (secrets included, in memory only: RunFolder.write_config leaves them
        out on disk, and --dry-run shows them redacted)."""
        return dict(
            {
                "model": self.spec.model,
                "dataset": _describe(self.spec.dataset),
                "eval_dataset": None if self.spec.eval_dataset is None else _describe(self.spec.eval_dataset),
                "eval_split": self.spec.eval_split,
                "lora": self.lora if self.lora else False,
                **({"load_in_4bit": True} if self.spec.load_in_4bit else {}),
                **({"load_in_8bit": True} if self.spec.load_in_8bit else {}),
                **({"quantization": dict(self.spec.quantization)} if self.spec.quantization else {}),
                **({"model_kwargs": dict(self.spec.model_kwargs)} if self.spec.model_kwargs else {}),
                **(
                    {"chat_template": _describe(self.spec.chat_template)} if self.spec.chat_template is not None else {}
                ),
                **dict(self.spec.watch),
                **({"slurm": dict(self.spec.slurm)} if self.spec.slurm else {}),
                **self.sft_args,
            }
        )


def sft_config(output_dir: str, sft_args: Mapping[str, Any]):
    """SFTConfig whose pickled form (``training_args.bin`` in every checkpoint and in ``final/``)
    holds no secret: the trainer uses the token in memory, the file gets ``<redacted>``. TRL's and
    transformers' own checks of the values (an unknown scheduler, conflicting keys) run here, so
    :func:`plan` calls it too: ``--dry-run`` shows them, before anything loads."""
    import copy
    import copyreg

    from trl import SFTConfig

    from ..secrets import redact

    class _SFTConfig(SFTConfig):
        def __reduce_ex__(self, protocol):
            # Rebuilt as a plain SFTConfig (stdlib reconstructor): loading it needs only trl.
            return copyreg._reconstructor, (SFTConfig, object, None), redact(dict(self.__dict__))

        def to_dict(self):  # what report_to integrations (tensorboard, wandb) write to disk
            return redact(super().to_dict())

        def __deepcopy__(self, memo):
            new = object.__new__(type(self))
            new.__dict__.update(copy.deepcopy(self.__dict__, memo))
            return new

    from .._quiet import quiet_libraries

    try:
        with quiet_libraries():  # transformers' rename warnings for names TRL itself still uses
            return _SFTConfig(output_dir=output_dir, **sft_args)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"invalid training config: {' '.join(redact(str(err)).split())[:300]}") from None


def _describe(source: Any) -> Any:
    """A source as config.yaml keeps it: strings and mappings as given (a convert function by its
    name, so resume finds it in the notebook again), other objects by their type."""
    if isinstance(source, str):
        return source
    if isinstance(source, Mapping):
        return {
            k: (
                getattr(v, "__name__", repr(v))
                if callable(v)
                else _describe(v)
                if isinstance(v, Mapping)
                else [_describe(x) for x in v]
                if isinstance(v, list)
                else v
            )
            for k, v in source.items()
        }
    return f"<{type(source).__name__}>"


def plan(spec: TrainSpec, *, namespace: Mapping | None = None, world: int = 1, dry_run: bool = False) -> Plan:
    """Data (validated first: a bad row fails before any model loads), config and hardware. What
    would stop the run for want of the network or an account is an error, or (``dry_run``) a note."""
    from ..data.load import train_val_split
    from ..data.spec import load_dataset_spec
    from ..models import choose_device_dtype
    from .watch_plan import plan_watch

    check_sft_values(spec.sft, sft_config_fields())  # a spec made in Python, not by from_mapping: before loading
    train_data = load_dataset_spec(spec.dataset, namespace=namespace)
    eval_data = load_dataset_spec(spec.eval_dataset, namespace=namespace) if spec.eval_dataset is not None else None
    if eval_data is None and spec.eval_split:
        train_data, eval_data = train_val_split(train_data, spec.eval_split, seed=int(spec.sft.get("seed", 42)))

    sft_args = {**DEFAULT_SFT, **spec.sft}
    device, dtype = choose_device_dtype("cpu" if sft_args.get("use_cpu") else None)
    for key in ("load_in_4bit", "load_in_8bit"):
        if getattr(spec, key) and device != "cuda":
            raise ConfigError(
                f"key '{key}' ({'QLoRA' if '4' in key else '8-bit'}) needs a CUDA GPU and bitsandbytes; "
                "this machine has no CUDA device"
            )
    template = _check_template(spec, train_data, namespace)
    notes = list(spec.notes)
    for problem in _account_problems(sft_args):
        if not dry_run:
            raise ConfigError(problem)
        notes.append(f"would stop before training: {problem}")
    if device == "cpu":
        sft_args.setdefault("use_cpu", True)
        # TRL turns activation checkpointing on by default; it saves GPU memory but on a CPU it
        # only recomputes activations (measured ~2x slower per step on SmolLM2-135M).
        if "gradient_checkpointing" not in spec.sft and "activation_checkpointing" not in spec.sft:
            sft_args["gradient_checkpointing"] = False
        if "bf16" not in spec.sft:
            sft_args["bf16"] = False  # TRL's default is bf16 autocast, also on a CPU: see _precision for why not here
    elif "bf16" not in spec.sft and "fp16" not in spec.sft:
        import torch

        sft_args["bf16" if dtype == torch.bfloat16 else "fp16"] = True
    elif "bf16" not in spec.sft:
        sft_args["bf16"] = not sft_args.get("fp16")  # what TRL's config does with bf16 unset
    precision = _precision(device, dtype, spec.sft, sft_args, spec.model_kwargs.get("dtype"))
    if eval_data is not None:
        sft_args.setdefault("eval_strategy", "steps")
        sft_args.setdefault("eval_steps", 0.2)  # a fraction: five evaluations over the run
    watch, answers, sft_args, implied = plan_watch(spec.watch, spec.sft, sft_args, eval_data, namespace)
    notes += implied
    if watch is not None and watch.generate:  # answers longer than the model's context cannot be generated
        from ..evaluate.generation import check_new_tokens, context_length
        from ..models import load_config

        trust = bool(spec.model_kwargs.get("trust_remote_code", False))
        context = context_length(load_config(spec.model, trust_remote_code=trust))
        check_new_tokens("eval_max_new_tokens", watch.max_new_tokens, context)
    lora = None if spec.lora is False else {**DEFAULT_LORA, **(spec.lora if isinstance(spec.lora, Mapping) else {})}
    asked = spec.model_kwargs.get("dtype")
    if device == "cpu" and asked not in (None, "auto", "float32", "fp32"):
        notes.append(f"dtype {asked}: the weights load in float32 on this CPU (bf16: true autocasts instead)")
    spec = _speed_settings(spec, sft_args, device, notes)
    # TRL's and transformers' own checks of the values (the precision is ours, checked above: the
    # build here must not depend on this machine's hardware, a plan can be for a GPU).
    values = {k: v for k, v in sft_args.items() if k not in ("assistant_only_loss", "completion_only_loss")}
    sft_config(str(spec.run_dir), {**values, "use_cpu": True, "bf16": False, "fp16": False})
    steps = planned_steps(len(train_data), sft_args, world)
    return Plan(
        spec=spec,
        sft_args=sft_args,
        lora=lora,
        device=device,
        dtype=dtype,
        train_data=train_data,
        eval_data=eval_data,
        steps=steps,
        template=template,
        notes=notes,
        watch=watch,
        answers=answers,
        precision=precision,
    )


# The CPU default is fp32, measured (README "Performance and memory"; benchmarks/bench_cpu_train.py):
# on this project's 2-core avx512_bf16 CPU, bf16 autocast trained SmolLM2-135M 1.18x faster per step,
# but the bundled task's tuned json_match was 95.0% with it against 97.5% in fp32 (40 validation rows,
# one run each): not equal, so fp32 stays the CPU default and bf16 is one key away. The user's line
# says what their CPU can do and where the measurement is, not one machine's numbers.


def _native_cpu_bf16() -> bool:
    """The CPU has bf16 instructions (avx512_bf16 or AMX; torch's own checks, private: False if gone)."""
    import torch

    checks = (getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    return any(check() for check in checks if check is not None)


def _precision(device: str, dtype, asked: Mapping[str, Any], sft_args: Mapping[str, Any], load_dtype=None) -> str:
    """Which precision training uses and why, in one line (``--dry-run`` and environment.json)."""
    on = "bf16" if sft_args.get("bf16") else "fp16" if sft_args.get("fp16") else None
    weights = "float32" if device == "cpu" else str(dtype if load_dtype in (None, "auto") else load_dtype)
    weights = weights.replace("torch.", "")
    if "bf16" in asked or "fp16" in asked:
        if on:
            return f"{on} mixed precision (asked; weights in {weights})"
        return (
            "fp32 (asked: no mixed precision)"
            if device == "cpu"
            else f"no mixed precision (asked): trains in the weights' dtype, {weights}"
        )
    if device != "cpu":
        why = "this GPU supports bf16" if on == "bf16" else "this GPU has no bf16"
        return f"{on} mixed precision ({why}; weights in {weights})"
    if _native_cpu_bf16():
        return (
            "fp32 (CPU default): this CPU has native bf16, so bf16: true trains faster with autocast, at some "
            'cost in accuracy (README "Performance and memory" measures both)'
        )
    return "fp32 (CPU default): this CPU has no avx512_bf16 / AMX, where bf16 autocast is emulated in software"


def _speed_settings(spec: TrainSpec, sft_args: dict, device: str, notes: list[str]) -> TrainSpec:
    """The settings that make a CUDA run fast (README "GPU presets"), checked against what each needs:
    what this machine cannot do is an error before anything loads (a missing package on a GPU) or is
    turned off with a note (a GPU-only setting on a CPU)."""
    from importlib.util import find_spec

    kwargs = dict(spec.model_kwargs)
    attn = str(kwargs.get("attn_implementation") or "")
    flash = attn.startswith("flash_attention") or "flash-attn" in attn
    if flash and device == "cpu":
        del kwargs["attn_implementation"]
        notes.append(
            f"attn_implementation {attn}: needs CUDA and flash-attn; this CPU uses transformers' default (sdpa)"
        )
        flash = False
    elif (
        attn.startswith("flash_attention")
        and find_spec("flash_attn" if attn == "flash_attention_2" else "flash_attn_interface") is None
    ):
        raise ConfigError(
            f"key 'attn_implementation': {attn} needs the flash-attn package (pip install flash-attn), "
            "or use kernels-community/flash-attn3 (pip install kernels), or sdpa"
        )
    elif "/" in attn and find_spec("kernels") is None:
        raise ConfigError(f"key 'attn_implementation': {attn} is a Hub kernel: pip install kernels, or use sdpa")
    if kwargs.get("use_kernels") and device != "cpu" and find_spec("kernels") is None:
        raise ConfigError(
            "key 'model_kwargs.use_kernels': the Hub's kernels need the kernels package: pip install kernels"
        )
    if sft_args.get("padding_free") and not sft_args.get("packing") and sft_args.get("max_length") is not None:
        raise ConfigError(
            "key 'padding_free': without packing TRL cannot enforce max_length and refuses to start; "
            "add packing: true, or max_length: null"
        )
    packed = bool(sft_args.get("packing")) and sft_args.get("packing_strategy", "bfd") in ("bfd", "bfd_split")
    if (sft_args.get("padding_free") or packed) and not flash:
        notes.append(
            f"{'packing (bfd) trains padding-free' if packed else 'padding_free'}: without FlashAttention transformers "
            "masks each packed row off from the others (from position_ids): correct, but without the memory saving; "
            "on a GPU add model_kwargs: {attn_implementation: flash_attention_2}"
        )
    for key, why in (
        ("activation_offloading", "moves a GPU's activations to CPU memory"),
        ("use_liger_kernel", "runs Triton kernels, which need a CUDA GPU"),
    ):
        if sft_args.get(key) and device == "cpu":
            sft_args[key] = False
            notes.append(f"{key}: {why}; on this CPU it is turned off")
    if sft_args.get("use_liger_kernel"):
        notes.append(
            "use_liger_kernel is deprecated in TRL 1.16: model_kwargs: {use_kernels: true} uses the Hub kernels"
        )
    if kwargs.get("use_kernels") and device == "cpu":
        del kwargs["use_kernels"]
        notes.append(
            "model_kwargs use_kernels: the Hub's training kernels are CUDA kernels; on this CPU it is turned off"
        )
    return replace(spec, model_kwargs=kwargs) if kwargs != dict(spec.model_kwargs) else spec


def _account_problems(sft_args: Mapping[str, Any]) -> list[str]:
    """Keys that need the network or an account: what would stop them here, said before training
    (never halfway)."""
    problems = []
    report = sft_args.get("report_to") or "none"
    wanted = [report] if isinstance(report, str) else list(report)
    wanted = [w for w in wanted if w not in ("none", "all")]
    if wanted:
        from transformers.integrations import get_available_reporting_integrations

        missing = [w for w in wanted if w not in get_available_reporting_integrations()]
        if missing:
            problems.append(
                f"report_to: {', '.join(missing)} is not installed here (pip install {missing[0]}), or "
                "remove report_to: the dashboard and metrics.jsonl record the run either way"
            )
    if sft_args.get("push_to_hub"):
        try:
            from huggingface_hub import whoami

            whoami(token=sft_args.get("hub_token"))
        except Exception as err:
            reason = one_line(err, 160)
            problems.append(
                f"push_to_hub: the Hugging Face Hub cannot be reached or no token is set ({reason}); "
                "log in (hf auth login) or remove push_to_hub: the model is saved in the run folder "
                "either way"
            )
    return problems


def _check_template(spec: TrainSpec, data, namespace: Mapping | None) -> tuple[str, Any] | None:
    """The chat template to train with, resolved (a bad value fails here, not after loading).
    Conversations need one: the model's own, or the cell's. Without either, a one-line error
    before any folder is made."""
    if spec.chat_template is not None:
        from ..template.chat_templates import resolve_template

        return resolve_template(spec.chat_template, namespace)
    if data.format not in ("messages", "conversational_prompt_completion"):
        return None
    from ..models import load_tokenizer

    trust = bool(spec.model_kwargs.get("trust_remote_code", False))
    if not getattr(load_tokenizer(spec.model, trust_remote_code=trust), "chat_template", None):
        raise ConfigError(
            f"model '{spec.model}' has no chat template (a base model?): give it one with chat_template: "
            "chatml (or a Jinja string, a .jinja file, or a model to copy it from)"
        )
