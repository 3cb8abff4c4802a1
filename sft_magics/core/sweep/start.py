"""Starting a sweep, in the notebook: every trial checked before the first starts (one bad value is
one line and nothing is made), the sweep folder claimed and written, the driver started detached."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import SftError, one_line
from ..run.layout import CELL_FILE
from .folder import SweepFolder, check_sweep_name
from .record import sweep_frame, sweep_record
from .spec import SweepError, SweepSpec, apply_params, corner_trials, planned_trials, read_sweep, trial_name

DATA_KEYS = ("dataset", "eval_dataset", "chat_template")


@dataclass
class SweepHandle:
    """What ``%%sft_train -o NAME`` binds for a sweep: its folder, its table, its best trial."""

    name: str
    path: Path

    def record(self) -> dict:
        return sweep_record(self.path)

    def table(self):
        """The trials as a pandas DataFrame."""
        return sweep_frame(self.record())

    @property
    def best(self) -> str | None:
        """The best trial with a final model (``NAME:best``); the live leader is ``record()["leader"]``."""
        return self.record()["best"]

    @property
    def state(self) -> str:
        return SweepFolder(self.path.parent, self.name).state()

    def stop(self) -> None:
        from .driver import stop_sweep

        stop_sweep(self.path)

    def wait(self, timeout: float | None = None) -> dict:
        from .driver import wait_sweep

        return wait_sweep(self.path, timeout=timeout)

    def __repr__(self) -> str:
        return f"<Sweep {self.name}: {self.state}, best {self.best}, {self.path}>"


def _checked(name: str, config: dict, output_dir: str, namespace, index: int, params: Mapping) -> Any:
    """One trial's config through the same checks as a run's (keys, values, data, template)."""
    from ..train.config import TrainSpec
    from ..train.plan import plan
    from ..train.worker import check_metrics_reach_the_worker

    try:
        spec = TrainSpec.from_mapping(name, config, output_dir=output_dir)
        p = plan(spec, namespace=namespace, dry_run=True)
        check_metrics_reach_the_worker(p)
    except SftError as err:
        values = ", ".join(f"{k}={v!r}" for k, v in params.items())
        raise SweepError(f"sweep trial {index} ({values}): {one_line(err, None)}") from None
    return spec, p


def _metric(sweep: SweepSpec, p) -> tuple[str, str]:
    """The metric the trials are compared by and its direction: the sweep's, else the watched one,
    else the eval loss. Only a metric the trials measure: a typo would leave every trial unscored."""
    from ..evaluate.metrics import METRICS

    answers = p.answers.describe() if p.answers is not None else None
    if answers and answers.get("by_default"):  # 8 sampled answers nobody asked for: not what trials are ranked by
        answers = None
    watched = answers["metric"] if answers else None
    measured = ["loss"] + (["eval_loss"] if p.eval_data is not None else []) + (answers["metrics"] if answers else [])
    metric = sweep.metric or watched or ("eval_loss" if p.eval_data is not None else None)
    if metric is None:
        raise SweepError(
            "key 'sweep.metric': the trials have no evaluation to compare them by: give eval_dataset or "
            "eval_split, or metric: loss to compare their last training loss"
        )
    name = metric[5:] if metric.startswith("eval_") and metric != "eval_loss" else metric
    if name not in measured:
        raise SweepError(
            f"key 'sweep.metric': the trials do not measure {metric} (they measure {', '.join(measured)}; "
            "metrics of the answers need eval_generate and eval_metrics)"
        )
    if sweep.direction:
        direction = sweep.direction
    elif name == watched:
        direction = "maximize" if answers["greater_is_better"] else "minimize"
    elif name in METRICS:
        direction = "maximize" if METRICS[name].higher_is_better else "minimize"
    else:
        direction = "minimize" if name.endswith("loss") else "maximize"
    return name, direction


def _parallel(sweep: SweepSpec) -> tuple[int, int]:
    """(trials at once, GPUs): one per GPU, one on a CPU, unless the sweep says."""
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return sweep.parallel or max(1, gpus), gpus


@dataclass
class CheckedSweep:
    """A sweep whose every trial passed the checks: what ``--dry-run`` shows and what is started."""

    name: str
    sweep: SweepSpec
    base: dict
    trials: list  # (name, params) of a grid or random sample; a search's corner cases
    metric: str
    direction: str
    parallel: int
    gpus: int
    first: Any  # the first trial's TrainSpec
    launch: dict  # how each trial starts: {"launcher": "none" | "slurm", "nproc": N}


def check_sweep(
    config: Mapping[str, Any],
    name: str | None,
    output_dir: str,
    *,
    namespace: Mapping | None = None,
    launcher: str = "none",
    nproc: int = 1,
):
    """Every trial through the same checks as a run's, before anything is made: one bad value is one
    line naming the trial and the key. ``launcher``: ``none`` (trials as background runs here) or
    ``slurm`` (each trial a SLURM job, ``nproc`` processes per node)."""
    sweep = read_sweep(config.get("sweep"))
    name = check_sweep_name(name or time.strftime("sweep-%Y%m%d-%H%M%S"))
    base = {k: v for k, v in config.items() if k != "sweep"}
    if "output_dir" in base:
        raise SweepError("key 'output_dir' cannot go with a sweep: the sweep names its trials' folders (use --name)")
    if launcher == "slurm":
        base.setdefault("slurm", {})
    planned = planned_trials(sweep)
    checks = planned if planned else corner_trials(sweep)
    for p in sweep.parameters:
        for value in p.values or () if p.key in DATA_KEYS else ():
            if not isinstance(value, str) or (namespace and value in namespace):
                raise SweepError(
                    f"key 'sweep.parameters.{p.key}': {value!r} must be a file or Hub name, not a notebook value"
                )
    names = [trial_name(name, i + 1, params) for i, params in enumerate(checks)]
    for n in names if planned else []:
        if (Path(output_dir) / n).exists():
            raise SweepError(f"trial {n}: a folder of that name already exists in {output_dir}: choose another --name")
    first = None
    for i, (n, params) in enumerate(zip(names, checks)):
        checked = _checked(n, apply_params(base, params), output_dir, namespace, i + 1, params)
        first = first or checked
    metric, direction = _metric(sweep, first[1])
    if launcher == "slurm":  # SLURM schedules the jobs: all queued unless the sweep says (a search: one, as
        parallel, gpus = sweep.parallel or (1 if sweep.method == "search" else sweep.trials), 0  # it learns)
    else:
        parallel, gpus = _parallel(sweep)
    launch = {"launcher": launcher, "nproc": nproc}
    return CheckedSweep(
        name, sweep, base, list(zip(names, checks)), metric, direction, parallel, gpus, first[0], launch
    )


def start_sweep(
    config: Mapping[str, Any],
    name: str | None,
    output_dir: str,
    *,
    namespace: Mapping | None = None,
    cell: str | None = None,
    launcher: str = "none",
    nproc: int = 1,
) -> SweepHandle:
    """Check every trial, claim ``output_dir/NAME``, write the queue, start the driver; return at once."""
    from ..processes import secrets_environment
    from ..secrets import scrub_text, split_secrets
    from ..train.worker import materialize_data

    c = check_sweep(config, name, output_dir, namespace=namespace, launcher=launcher, nproc=nproc)
    folder = SweepFolder.create(output_dir, c.name)
    try:
        data = materialize_data(dataclasses.replace(c.first, name=c.name), namespace)  # into the sweep folder
        base = dict(c.base)
        swept = {p.key for p in c.sweep.parameters}
        for key in DATA_KEYS:
            if key not in swept and base.get(key) is not None:
                base[key] = getattr(data, key)
        clean, secrets = split_secrets(base)
        if cell:
            (folder / CELL_FILE).write_text(scrub_text(cell))
        folder.write_info(
            {
                "name": c.name,
                "created": round(time.time(), 3),
                "method": c.sweep.method,
                "spec": c.sweep.as_dict(),
                "base": clean,
                "metric": c.metric,
                "direction": c.direction,
                "parallel": c.parallel,
                "gpus": c.gpus,
                "launch": c.launch,
                "secret_keys": [".".join(map(str, k)) for k in secrets],  # names only: the values travel in env
                "output_dir": str(Path(output_dir).resolve()),
            }
        )
        planned = c.trials if c.sweep.method != "search" else []
        trials = [{"index": i + 1, "name": n, "params": p, "state": "queued"} for i, (n, p) in enumerate(planned)]
        queue = {"state": "queued", "trials": trials}
        folder.write_queue(queue)
    except BaseException:
        folder.remove()
        raise
    from .driver import first_trials, start_driver

    if c.sweep.method != "search":
        # The first trials start from here, where the libraries are loaded already: the driver's own
        # start (a new Python loading them) then overlaps with their training instead of delaying it.
        first_trials(folder, queue, c.sweep)
    start_driver(folder, secrets_environment(secrets))
    return SweepHandle(c.name, folder.path)
