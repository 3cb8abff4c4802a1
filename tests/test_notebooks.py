"""The example notebooks (examples/*.ipynb), executed top to bottom in a real Jupyter kernel.

Each notebook's first code cell is its parameter cell (tagged ``parameters``, papermill style).
The test appends CI values to it — fewer training steps, an absolute data path, a temporary
output folder — runs the notebook with nbclient in a temporary working directory (with a ``data``
link to examples/data, so the notebooks' relative paths work as they do in Jupyter), then checks
that no cell failed and that each notebook's key results are in its outputs and on disk.

Step counts, measured on the 2-core CPU for notebook 4 (batch 8, lr 1e-3, 16 validation rows,
2-shot prompting baseline): after 10 steps the tuned model scored json_match 50% (few-shot 31%,
base 0%), after 24 steps 69% (few-shot 31%, base 0%); the demo's 80 steps reach 100% on all 40
rows. So CI trains 24 steps and checks "tuned clearly ahead of base, and ahead of few-shot".
Notebook 3 needs only one step before and one after the resume to show that the resume continued
the run.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

pytestmark = pytest.mark.real_model

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
DATA = EXAMPLES / "data"
NOTEBOOKS = sorted(p.name for p in EXAMPLES.glob("*.ipynb"))

# CI values for each notebook's parameters (DATA and OUTPUT_DIR are set for every notebook).
CI_PARAMETERS = {
    "01_chat_templates.ipynb": {},
    "02_data_doctor.ipynb": {},
    "03_fine_tuning.ipynb": {"FIRST_STEPS": 1, "STEPS": 2},
    "04_evaluation_and_chat.ipynb": {"STEPS": 24, "FEW_SHOT": 2, "EVAL_LIMIT": 16},
    "05_background_runs.ipynb": {"STEPS": 3, "DDP_STEPS": 2},
    "06_base_to_chat.ipynb": {"STEPS": 3},
    "07_sweeps.ipynb": {"STEPS": 2, "EVAL_EVERY": 2, "WATCH": 2, "RANKS": [16], "EVAL_LIMIT": 4},
}
CELL_TIMEOUT = 1200  # seconds; a shared 2-core machine can be slow, the notebooks are short


# -- helpers -----------------------------------------------------------------------------------


def parameter_cell(nb):
    """The first code cell, which must be the parameter cell."""
    first = next(c for c in nb.cells if c.cell_type == "code")
    assert "parameters" in first.metadata.get("tags", []), "the first code cell must be tagged 'parameters'"
    return first


def with_parameters(nb, values: dict, common: dict) -> None:
    """Append ``NAME = value`` lines to the parameter cell: ``values`` must all be parameters of the
    notebook; ``common`` ones (data and output folders) are set where the notebook has them."""
    cell = parameter_cell(nb)
    defined = set(re.findall(r"^([A-Z_][A-Z0-9_]*)\s*=", cell.source, flags=re.M))
    unknown = set(values) - defined
    assert not unknown, f"not parameters of this notebook: {sorted(unknown)} (it defines {sorted(defined)})"
    values = {**{k: v for k, v in common.items() if k in defined}, **values}
    cell.source += "\n\n# CI values (tests/test_notebooks.py)\n" + "".join(f"{k} = {v!r}\n" for k, v in values.items())


def text_of(output) -> str:
    if output.output_type == "stream":
        return output.text
    if output.output_type in ("display_data", "execute_result"):
        return output.get("data", {}).get("text/plain", "")
    if output.output_type == "error":
        return "\n".join(output.traceback)
    return ""


def cell_with(nb, snippet: str):
    """The first code cell whose source contains ``snippet``."""
    for cell in nb.cells:
        if cell.cell_type == "code" and snippet in cell.source:
            return cell
    raise AssertionError(f"no code cell contains {snippet!r}")


def out(nb, snippet: str) -> str:
    """All text outputs of the first code cell whose source contains ``snippet``."""
    return "\n".join(text_of(o) for o in cell_with(nb, snippet).outputs)


def run_notebook(name: str, tmp_path: Path):
    """Execute examples/<name> with its CI parameters; return (executed notebook, output dir, seconds)."""
    nb = nbformat.read(EXAMPLES / name, as_version=4)
    work = tmp_path / "work"
    work.mkdir()
    (work / "data").symlink_to(DATA, target_is_directory=True)  # what "data/..." means next to the notebook
    runs = work / "runs"
    with_parameters(nb, CI_PARAMETERS[name], common={"DATA": str(DATA), "OUTPUT_DIR": str(runs)})
    client = nbclient.NotebookClient(
        nb,
        timeout=CELL_TIMEOUT,
        kernel_name="python3",
        allow_errors=False,
        resources={"metadata": {"path": str(work)}},
    )
    started = time.monotonic()
    try:
        client.execute()
    finally:
        seconds = time.monotonic() - started
        print(f"{name}: {seconds:.0f} s")
        (tmp_path / f"executed-{name}").write_text(nbformat.writes(nb))  # for a look after a failure
    assert_no_errors(nb)
    return nb, runs, seconds


def assert_no_errors(nb) -> None:
    for i, cell in enumerate(nb.cells):
        for o in cell.get("outputs", []):
            assert o.output_type != "error", f"cell {i} raised {o.ename}: {o.evalue}"
            if o.output_type == "stream" and o.name == "stderr":
                assert "Traceback" not in o.text and "UsageError" not in o.text, f"cell {i} printed an error:\n{o.text}"


# -- the notebooks as files --------------------------------------------------------------------


def test_every_notebook_is_covered():
    assert NOTEBOOKS, "no example notebooks found"
    assert sorted(CI_PARAMETERS) == NOTEBOOKS, "add CI parameters and checks for every example notebook"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_saved_clean_with_a_parameter_cell(name):
    nb = nbformat.read(EXAMPLES / name, as_version=4)
    nbformat.validate(nb)
    assert nb.nbformat == 4
    assert nb.metadata["kernelspec"]["name"] == "python3"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{name} is saved with outputs"
    params = parameter_cell(nb)
    assert re.search(r"^DATA\s*=", params.source, flags=re.M), "the parameter cell defines DATA"
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# "), "a title comes first"
    prose = sum(len(c.source) for c in nb.cells if c.cell_type == "markdown")
    assert prose > 2000, "the notebook explains what it does"


# -- the notebooks, executed -------------------------------------------------------------------


def test_01_chat_templates(tmp_path):
    nb, _, _ = run_notebook("01_chat_templates.ipynb", tmp_path)

    rendered = out(nb, "%sft_template smollm2-135m --messages conversation")
    assert "<|im_start|>assistant" in rendered and "<|im_end|>" in rendered  # special tokens
    assert "«The capital of France is Paris.<|im_end|>" in rendered  # trained-token marks
    assert "✓ end token trained" in rendered and "⚠" not in rendered

    printed = out(nb, "print(rendering)")
    assert "tokens: 36 · trained: 9" in printed

    assert "✓ inference prompt = training rendering up to the answer" in out(nb, "--inference")
    assert "the answer is cut mid-way" in out(nb, "--max-length 88")
    assert "no trained token left: TRL drops this row" in out(nb, "--max-length 40")

    broken = out(nb, "--chat-template forgot_end_token")
    assert "⚠ end token trained" in broken and "✓ prefix-preserving" in broken
    assert "⚠ end token trained — trained span 1 has no end-of-turn/EOS token" in out(nb, "for check in broken.checks")


def test_02_data_doctor(tmp_path):
    nb, runs, _ = run_notebook("02_data_doctor.ipynb", tmp_path)

    messy = out(nb, "%sft_data messy")
    for finding in (
        "row 3 messages[0].role: unknown role 'human'",
        "row 7 messages[1].content: is empty",
        "row 9 messages[1].role: unknown role 'gpt'",
        "row 11 messages: conversation ends on a user turn",
        "no trained token left: rows 20",
        "rows 2 = 15 = 16",
    ):
        assert finding in messy, finding
    assert "4 invalid rows, 1 truncated, 2 duplicates" in messy

    clean = out(nb, "%sft_data clean")
    assert "invalid rows:" not in clean  # the report lists no invalid rows
    assert "duplicates: none" in clean and "0 rows truncated" in clean
    assert "0 invalid rows, 0 truncated, 0 duplicates" in clean

    rows = (runs / "clean.jsonl").read_text().splitlines()
    assert len(rows) == 36 and all(json.loads(r)["messages"][-1]["role"] == "assistant" for r in rows)


def test_03_fine_tuning(tmp_path):
    params = CI_PARAMETERS["03_fine_tuning.ipynb"]
    first, total = params["FIRST_STEPS"], params["STEPS"]
    nb, runs, _ = run_notebook("03_fine_tuning.ipynb", tmp_path)

    dry = out(nb, "--dry-run")
    assert "planned optimizer steps: 63" in dry and "dry run: nothing was trained" in dry

    assert f"run 'json-lora': finished at step {first} of {first}" in out(nb, "in {run.train_seconds:.0f} s")
    assert re.search(rf"json-lora\s+smollm2-135m\s.*\s{first}/{first}\s+finished", out(nb, "%sft_runs"))
    resumed = out(nb, "--resume json-lora -o run")
    assert f"<TrainResult json-lora: finished, step {total}/{total}" in resumed
    after = out(nb, 'print(f"run {run.name!r}: {run.status} at step {run.global_step} of {run.max_steps}")\n%sft_runs')
    assert f"finished at step {total} of {total}" in after and re.search(rf"\s{total}/{total}\s+finished", after)

    run_dir = runs / "json-lora"
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "finished" and status["step"] == total
    assert (run_dir / f"checkpoint-{total}").is_dir() and (run_dir / "final" / "adapter_model.safetensors").is_file()
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    finished = [e["step"] for e in events if e["kind"] == "finished"]
    assert finished == [first, total]  # the first leg, then the resumed one
    resumed_logs = [e["step"] for e in events if e["kind"] == "log" and "loss" in e]
    assert resumed_logs == list(range(1, total + 1))  # every step logged once: the resume continued
    assert "config.yaml" in out(nb, "for path in sorted(run_dir.rglob")
    # Watching the answers: each evaluation answered the same 8 validation questions, and the
    # saved notebook keeps the sample panel in the run's static summary.
    answers = [e for e in events if e["kind"] == "answers"]
    assert answers and all(a["rows"] == 8 and len(a["samples"]) == 3 for a in answers)
    assert len({tuple(s["prompt"] for s in a["samples"]) for a in answers}) == 1
    summary = "\n".join(
        o.get("data", {}).get("text/html", "")
        for o in cell_with(nb, "max_steps: {FIRST_STEPS}").outputs
        if o.output_type in ("display_data", "execute_result")
    )
    assert 'class="sft-samples"' in summary and "answers at step" in summary and "json_match" in summary


def test_04_evaluation_and_chat(tmp_path):
    nb, runs, _ = run_notebook("04_evaluation_and_chat.ipynb", tmp_path)
    limit = CI_PARAMETERS["04_evaluation_and_chat.ipynb"]["EVAL_LIMIT"]

    table = out(nb, "%sft_eval json-extract")
    assert f"evaluation on {limit} examples" in table
    assert re.search(r"^json_match ↑\s", table, flags=re.M), table

    (summary_file,) = (runs / "json-extract" / "eval").glob("*/summary.json")
    summary = json.loads(summary_file.read_text())
    match = summary["metrics"]["json_match"]
    print("json_match:", match)
    assert summary["examples"] == limit and set(match) == {"tuned", "base", "few_shot"}
    # The key result: tuned clearly ahead of the base model, and ahead of few-shot prompting.
    assert match["tuned"] >= 0.5 and match["tuned"] >= match["base"] + 0.4, match
    assert match["tuned"] > match["few_shot"], match
    assert match["base"] <= 0.25, match  # the base model does not answer in the required form
    assert summary["prompt_tokens"]["few_shot"] > 2 * summary["prompt_tokens"]["tuned"]

    wrong = out(nb, 'for label in ("tuned", "few_shot")')
    assert re.search(rf"^tuned: \d+ of {limit} wrong$", wrong, flags=re.M), wrong

    chat = out(nb, "--compare base --max-new-tokens 60")
    assert "── tuned ──" in chat and "── base (adapter off) ──" in chat

    exported = out(nb, "%sft_export json-extract")
    assert "LoRA merged into the base weights (standalone)" in exported and re.search(r"verified\s+✓", exported)
    folder = runs / "json-extract-merged"
    assert (folder / "model.safetensors").is_file() and not (folder / "adapter_config.json").exists()
    standalone = out(nb, "AutoModelForCausalLM.from_pretrained(exported.path)")
    (line,) = [x for x in standalone.splitlines() if x.startswith("{")]
    answer = json.loads(line)  # generated by plain transformers from the exported folder: valid JSON
    assert set(answer) == {"name", "age", "city", "country"}

    # The GGUF: verified in llama.cpp, then answered by llama-cpp-python's own chat API.
    gguf = out(nb, "--gguf q8_0")
    assert "model-q8_0.gguf" in gguf and re.search(r"llama\.cpp\s+✓ [01]/1 probes", gguf), gguf
    assert (runs / "json-extract-gguf" / "model-q8_0.gguf").is_file()
    llama = out(nb, "create_chat_completion")
    (line,) = [x for x in llama.splitlines() if x.startswith('{"')]  # (the Modelfile's template lines start with {{)
    assert set(json.loads(line)) == {"name", "age", "city", "country"}  # llama.cpp's answer: the task's JSON
    assert "FROM ./model-q8_0.gguf" in llama and 'PARAMETER stop "<|im_end|>"' in llama


def test_05_background_runs(tmp_path):
    params = CI_PARAMETERS["05_background_runs.ipynb"]
    nb, runs, _ = run_notebook("05_background_runs.ipynb", tmp_path)

    assert "started in the background" in out(nb, "--background -o bg")
    assert "status now:" in out(nb, "print(bg)")
    steps = params["STEPS"]
    assert f"run 'json-bg': finished at step {steps} of {steps}" in out(nb, "%sft_wait json-bg")
    bg = json.loads((runs / "json-bg" / "status.json").read_text())
    assert bg["state"] == "finished" and bg["step"] == steps

    ddp_steps = params["DDP_STEPS"]
    ddp = out(nb, "status = json.loads((ddp.path")
    assert f"run 'json-ddp': finished at step {ddp_steps}, world size 2" in ddp
    assert "finished ×2 processes" in ddp
    status = json.loads((runs / "json-ddp" / "status.json").read_text())
    assert status["state"] == "finished" and status["world_size"] == 2
    assert (runs / "json-ddp" / "final" / "adapter_model.safetensors").is_file()


def test_07_sweeps(tmp_path):
    nb, runs, _ = run_notebook("07_sweeps.ipynb", tmp_path)

    assert "sweep 'lr-rank' started: 2 trials queued" in out(nb, "%%sft_train --name lr-rank")
    queue = json.loads((runs / "lr-rank" / "trials.json").read_text())
    assert queue["state"] == "finished" and [t["state"] for t in queue["trials"]] == ["finished", "finished"]
    names = [t["name"] for t in queue["trials"]]
    assert names == ["lr-rank.01-learning_rate_0.001-r_16", "lr-rank.02-learning_rate_0.003-r_16"]
    table = out(nb, "table = sweep.table()")
    assert all(n in table for n in names) and "json_match" in table
    best = out(nb, "best = sweep.best")
    assert re.search(r"best trial: lr-rank\.0[12]-", best) and "the Quick start's setting: lr-rank.01-" in best
    assert re.search(
        r"json_match on 4 validation rows: best trial \d+\.\d%, the Quick start's setting \d+\.\d%",
        out(nb, "default_scores"),
    )


def test_06_base_to_chat(tmp_path):
    nb, runs, _ = run_notebook("06_base_to_chat.ipynb", tmp_path)

    doctor = out(nb, "%sft_data {questions}")
    assert "columns: user ← question, assistant ← answer" in doctor and "system prompt added" in doctor
    tokens = out(nb, "%sft_template {MODEL}")
    assert "<|user|>" in tokens and "<|assistant|>" in tokens and "✓ end token trained" in tokens
    assert "✓ every message rendered" in tokens
    assert (runs / "chat-from-base" / "final" / "chat_template.jinja").read_text().startswith("{% for message")
    assert "end-of-turn token: <|im_end|>" in out(nb, "%sft_chat chat-from-base")
    shipped = out(nb, "%sft_export chat-from-base")
    assert "<|user|>\nHi<|im_end|>\n<|assistant|>\n" in shipped and "<|im_end|>" in shipped.split("stops on:")[1]
