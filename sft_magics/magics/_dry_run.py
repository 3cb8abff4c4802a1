"""``%%sft_train --dry-run``: the resolved config, data, device, fit check and steps, and for
``--launcher slurm`` the job script; nothing trained, nothing written."""

from __future__ import annotations

from ..display import show


def dry_run(magics, spec, output, args):
    from ..core.secrets import redact
    from ..core.train.memory import fit_check
    from ..core.train.plan import plan
    from ..display._views import TableView

    nodes = int(spec.slurm.get("nodes", 1)) if args.launcher == "slurm" else 1
    world = nodes * args.nproc if args.launcher != "none" else 1  # the steps depend on it
    p = plan(spec, namespace=magics.shell.user_ns, dry_run=True, world=world)
    trainable, total, fit = fit_check(p)
    shown = redact(p.config())  # secrets: the key is shown as read, its value never
    rows = [[k, v] for k, v in shown.items()]
    notes = [
        f"data: {p.train_data.source} · {len(p.train_data)} rows ({p.train_data.source_format} → {p.train_data.format})"
        + (f" · eval {len(p.eval_data)} rows" if p.eval_data is not None else ""),
        f"device {p.device} · dtype {str(p.dtype).replace('torch.', '')}",
        f"precision: {p.precision}",
        f"trainable parameters {trainable:,} of {total:,} ({trainable / total:.2%})",
        f"planned optimizer steps: {p.steps}",
        fit.summary(),
        *(f"to fit: {a}" for a in fit.advice),
        *(
            f"chat template: {p.template[0]} {p.template[1] if p.template[0] != 'jinja' else '(a Jinja template)'}"
            for _ in [0]
            if p.template
        ),
        *(f"read: {n}" for n in p.notes),
        "dry run: nothing was trained",
    ]
    if args.launcher == "slurm":
        notes += _slurm_preview(spec, args)
    show(TableView(f"%%sft_train --dry-run · {spec.name}", ["key", "value"], rows, notes), magics.mode)
    summary = {
        "config": shown,
        "device": p.device,
        "dtype": str(p.dtype),
        "precision": p.precision,
        "fit": fit.as_dict(),
        "trainable_params": trainable,
        "total_params": total,
        "steps": p.steps,
        "train_rows": len(p.train_data),
        "notes": list(p.notes),
        "run_dir": str(spec.run_dir),
    }
    return magics._bind(output, summary) if output else None


def _slurm_preview(spec, args) -> list[str]:
    """``--dry-run --launcher slurm``: the job script that would be submitted, the command each node
    runs, and what sbatch would take from the environment."""
    import os

    from ..core.cluster import environment_defaults, shell_word, slurm_options
    from ..core.train.slurm import job_script, node_command

    options = slurm_options(spec.slurm)
    launch = {"nproc": args.nproc, "accelerate_config": args.accelerate_config, "resume_anyway": args.resume_anyway}
    defaults = {k: v for k, v in environment_defaults(os.environ).items() if k not in options.given()}
    return [
        f"SLURM: {options.nodes} node(s) × {args.nproc} process(es); each node runs: "
        + " ".join(shell_word(a) for a in node_command(spec.run_dir, options, **launch)),
        *(f"SLURM default from the environment: {k} = {v}" for k, v in defaults.items()),
        "job script (job.sbatch):\n" + job_script(spec.run_dir, options, **launch),
    ]
