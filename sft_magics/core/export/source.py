"""Where an export comes from: the run it was trained in (folder, base model, data, steps, status, which checkpoint final/ is), and the probes its verification asks (the run's own eval prompts)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import SftError


def export_source(target: str, run_dir: Path | None) -> dict:
    """For the manifest: what was exported — the run (folder, base model, data, steps, status) and
    which of its checkpoints ``final/`` is (the best one, when the run followed a metric)."""
    from ..run.lookup import run_record
    from ..run.status import is_number, read_status

    source: dict[str, Any] = {"target": str(target)}
    if run_dir is None:
        return source
    record = run_record(Path(run_dir))
    best = read_status(Path(run_dir))[0].get("best")
    checkpoint = (
        f"{best.get('checkpoint')} (best {best.get('metric')} {best['value']:.4g})"
        if best and best.get("final_is_best") and is_number(best.get("value"))
        else f"the last step ({record['steps']})"
    )
    source.update(
        run=record["name"],
        run_folder=record["path"],
        model=record["model"],
        dataset=record["dataset"],
        steps=record["steps"],
        status=record["status"],
        checkpoint=f"final/ = {checkpoint}",
    )
    return source


def eval_probes(run_dir: Path, *, namespace=None, count: int = 3) -> list[Any]:
    """The first prompts of the run's ``eval_dataset`` (what it was watched and evaluated on), as the
    GGUF's probes; none when the run has no loadable eval_dataset (the default probe is used)."""
    from ..data.spec import load_dataset_spec
    from ..evaluate.evaluation import examples_from
    from ..run.folder import read_config

    spec = read_config(run_dir).get("eval_dataset")
    if spec is None or (isinstance(spec, str) and spec.startswith("<")):
        return []
    try:
        return [e.prompt for e in examples_from(load_dataset_spec(spec, namespace=namespace))[:count]]
    except (SftError, OSError, ValueError):
        return []
