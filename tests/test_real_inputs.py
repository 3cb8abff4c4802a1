"""Real inputs: a base model given a chat template, your own columns, the TRL recipe you already
have, notebook variables in the cell, templates that drop what the data says (issue 13)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from IPython.core.error import UsageError

from sft_magics.core.template.chat_templates import CHATML


@pytest.fixture(scope="session")
def base_model(tmp_path_factory) -> str:
    """A tiny *base* model: no chat template, no chat tokens (like SmolLM2-135M on the Hub)."""
    from sft_magics.testing import make_tiny_model

    return str(make_tiny_model(tmp_path_factory.mktemp("base-model"), base=True))


@pytest.fixture
def qa_csv(tmp_path) -> Path:
    """GSM8K-like columns: question, answer."""
    path = tmp_path / "qa.csv"
    path.write_text("question,answer\n" + "".join(f"What is {i} plus {i}?,{2 * i}\n" for i in range(24)))
    return path


def _run_dir(shell, name: str) -> Path:
    return Path(shell.config.SftMagics.output_dir) / name


# -- a base model and a chat template ---------------------------------------------------------------


def test_a_model_without_a_template_says_which_key_to_set_before_any_folder(shell, base_model, qa_jsonl, tmp_path):
    with pytest.raises(
        UsageError, match=r"has no chat template \(a base model\?\): give it one with chat_template: chatml"
    ):
        shell.run_cell_magic("sft_train", "--name nt", f"model: {base_model}\ndataset: {qa_jsonl}\nmax_steps: 2\n")
    assert not (tmp_path / "runs").exists()
    with pytest.raises(
        UsageError,
        match=r"^row 0: this model has no chat template \(a base model\?\): give it one — --chat-template chatml",
    ):
        shell.run_line_magic("sft_template", f"{base_model} --data {qa_jsonl}")


def test_a_base_model_given_chatml_trains_exports_and_stops_on_its_end_token(shell, base_model, qa_csv, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    cell = (
        f"model: {base_model}\n"
        f"dataset: {{path: {qa_csv}, columns: {{user: question, assistant: answer}}, system: You add numbers.}}\n"
        "chat_template: chatml\nmax_steps: 40\nper_device_train_batch_size: 8\nlearning_rate: 1.0e-2\n"
        "lr_scheduler_type: constant\nwarmup_steps: 0\n"
    )
    run = shell.run_cell_magic("sft_train", "--name base -o run", cell)
    assert run.status == "finished"
    im_end = run.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert run.tokenizer.chat_template == CHATML and run.tokenizer.eos_token == "<|im_end|>"
    # The new tokens' rows were trained (LoRA + modules_to_save), not left at their initial values.
    assert "embed_tokens" in str(run.model.peft_config["default"].modules_to_save)
    # What was trained on is what the run folder keeps, and what an export ships.
    final = AutoTokenizer.from_pretrained(_run_dir(shell, "base") / "final")
    assert final.chat_template == CHATML and final.convert_tokens_to_ids("<|im_end|>") == im_end
    out = tmp_path / "export"
    exported = shell.run_line_magic("sft_export", f"base --to {out} --merge --probe 'What is 3 plus 3?' -o e")
    # Reloaded with plain transformers, it answers and stops on the template's end token (the
    # export's verification compared these ids with the notebook model's, token for token).
    assert exported.token_ids[-1] == im_end and len(exported.token_ids) < 32
    tok = AutoTokenizer.from_pretrained(out)
    messages = [{"role": "user", "content": "What is 2 plus 2?"}]
    assert tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == (
        "<|im_start|>user\nWhat is 2 plus 2?<|im_end|>\n<|im_start|>assistant\n"
    )
    eos = GenerationConfig.from_pretrained(out).eos_token_id
    assert im_end in ([eos] if isinstance(eos, int) else eos)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.get_input_embeddings().weight.shape[0] == len(tok)
    # A bare adapter of a run that added tokens would not load onto the plain base: refused, in one line.
    with pytest.raises(UsageError, match=r"added tokens to the vocabulary.*export it with --merge"):
        shell.run_line_magic("sft_export", f"base --to {tmp_path / 'adapter'}")


def test_another_template_family_is_the_one_trained_evaluated_and_chatted_with(shell, tiny_model, qa_jsonl):
    run = shell.run_cell_magic(
        "sft_train",
        "--name zeph -o run",
        f"model: {tiny_model}\ndataset: {qa_jsonl}\nchat_template: zephyr\nmax_steps: 2\nper_device_train_batch_size: 4\n",
    )
    assert "<|user|>" in run.tokenizer.get_vocab() and run.tokenizer.chat_template.startswith("{% for message")
    r = shell.run_line_magic("sft_template", "--data " + qa_jsonl + f" {_run_dir(shell, 'zeph') / 'final'} -o r")
    texts = [t.text for t in r.tokens]
    assert "<|user|>" in texts and "<|assistant|>" in texts and "<|im_start|>" not in texts
    from sft_magics.core.evaluate.chat import ChatSession
    from sft_magics.core.models import load_model

    loaded = load_model(str(_run_dir(shell, "zeph") / "final"))
    prompt = ChatSession(loaded.model, loaded.tokenizer)._render([{"role": "user", "content": "Hi"}])
    assert prompt.startswith("<|user|>\nHi") and prompt.endswith("<|assistant|>\n")
    # %sft_eval evaluates through the same template: its prompts are rendered by the run's tokenizer.
    report = shell.run_line_magic("sft_eval", f"zeph --data {qa_jsonl} --limit 2 --metrics loss,exact_match -o rep")
    assert report["tuned"].mean_prompt_tokens > 0
    from sft_magics.core.evaluate.generation import render_prompts

    assert render_prompts(loaded.tokenizer, [report.eval_examples[0].prompt])[0].startswith("<|user|>")


def test_chat_template_path_is_the_template_trained_with(shell, tiny_model, qa_jsonl, tmp_path):
    template = tmp_path / "mine.jinja"
    template.write_text(
        "{% for m in messages %}[{{ m.role }}] {{ m.content }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}[assistant] {% endif %}"
    )
    run = shell.run_cell_magic(
        "sft_train",
        "--name path -o run",
        f"model: {tiny_model}\ndataset: {qa_jsonl}\nchat_template_path: {template}\nmax_steps: 1\n",
    )
    assert run.tokenizer.chat_template == template.read_text()
    assert (_run_dir(shell, "path") / "final" / "chat_template.jinja").read_text() == template.read_text()


def test_template_previews_for_a_base_model(shell, base_model, qa_jsonl):
    r = shell.run_line_magic("sft_template", f"{base_model} --data {qa_jsonl} --chat-template chatml -o r")
    special = [t.text for t in r.tokens if t.special]
    assert special[:2] == ["<|im_start|>", "<|im_end|>"]  # single special tokens, as training will see them
    stats = shell.run_line_magic("sft_data", f"{qa_jsonl} --model {base_model} --chat-template chatml -o s")
    assert stats.rows == 24 and min(stats.total_tokens) > 0


# -- your columns, your conversion -------------------------------------------------------------------


def test_your_columns_in_the_doctor_and_in_the_cell(shell, tiny_model, qa_csv, capsys):
    with pytest.raises(UsageError, match="no known format: columns are question, answer"):
        shell.run_line_magic("sft_data", f"{qa_csv} --model {tiny_model}")
    stats = shell.run_line_magic(
        "sft_data", f"{qa_csv} --model {tiny_model} --columns prompt=question,completion=answer -o s"
    )
    assert stats.format == "prompt_completion" and stats.rows == 24
    assert "columns: prompt ← question, completion ← answer" in capsys.readouterr().out
    with pytest.raises(UsageError, match=r"row 0: no column 'questoin' \(it has: question, answer\)"):
        shell.run_line_magic("sft_data", f"{qa_csv} --model {tiny_model} --columns prompt=questoin,completion=answer")
    with pytest.raises(UsageError, match="expected NAME=COLUMN pairs"):
        shell.run_line_magic("sft_data", f"{qa_csv} --model {tiny_model} --columns prompt")
    run = shell.run_cell_magic(
        "sft_train",
        "--name cols -o run",
        f"model: {tiny_model}\ndataset: {{path: {qa_csv}, columns: {{user: question, assistant: answer}}}}\nmax_steps: 1\n",
    )
    assert run.status == "finished"
    report = shell.run_line_magic(
        "sft_eval",
        f"cols --data {qa_csv} --columns user=question,assistant=answer --limit 2 --metrics exact_match -o rep",
    )
    assert [e.reference for e in report.eval_examples] == ["0", "2"]
    assert report.eval_examples[1].question == "What is 1 plus 1?"


def test_a_notebook_function_converts_rows(shell, tiny_model, qa_csv):
    def process_dataset(row):  # the course's exercise
        return [
            {"role": "user", "content": row["question"]},
            {"role": "assistant", "content": f"It is {row['answer']}."},
        ]

    shell.user_ns["process_dataset"] = process_dataset
    stats = shell.run_line_magic("sft_data", f"{qa_csv} --model {tiny_model} --convert process_dataset -o s")
    assert stats.format == "messages" and stats.roles == {"assistant": 24, "user": 24}
    run = shell.run_cell_magic(
        "sft_train",
        "--name conv -o run",
        f"model: {tiny_model}\ndataset: {{path: {qa_csv}, convert: process_dataset}}\nmax_steps: 1\n",
    )
    assert run.status == "finished"
    shell.user_ns["broken"] = lambda row: row["nope"]
    with pytest.raises(UsageError, match=r"row 0: convert raised KeyError: 'nope'"):
        shell.run_line_magic("sft_data", f"{qa_csv} --model {tiny_model} --convert broken")


# -- notebook variables in the cell ---------------------------------------------------------------------


def test_notebook_variables_expand_in_the_cell(shell, tiny_model, qa_jsonl):
    shell.user_ns.update(steps=2, lr=1e-3, data_file=qa_jsonl, model=tiny_model)
    plan = shell.run_cell_magic(
        "sft_train",
        "--name v --dry-run -o p",
        "model: {model}\ndataset: {data_file}\nmax_steps: {steps}\nlearning_rate: {lr}\nrun_name: '{{steps}}'\n",
    )
    assert plan["steps"] == 2 and plan["config"]["learning_rate"] == 0.001
    assert plan["config"]["run_name"] == "{steps}"  # {{...}}: a literal brace
    with pytest.raises(UsageError, match=r"the cell names \{nothing\}, but there is no notebook variable 'nothing'"):
        shell.run_cell_magic("sft_train", "--name v --dry-run", "model: {model}\ndataset: {nothing}\n")


# -- the TRL recipe you already have ------------------------------------------------------------------


def test_output_dir_is_the_run_folder_as_in_trl(shell, tiny_model, qa_jsonl, tmp_path):
    target = tmp_path / "elsewhere" / "my-run"
    shell.run_cell_magic(
        "sft_train", "", f"model: {tiny_model}\ndataset: {qa_jsonl}\nmax_steps: 1\noutput_dir: {target}\n"
    )
    assert (target / "final").is_dir() and json.loads((target / "status.json").read_text())["state"] == "finished"
    with pytest.raises(UsageError, match="--name other and output_dir .* name two different run folders"):
        shell.run_cell_magic(
            "sft_train", "--name other", f"model: {tiny_model}\ndataset: {qa_jsonl}\noutput_dir: {target}\n"
        )


@pytest.fixture(scope="session")
def ultrachat_like(tmp_path_factory) -> str:
    """A local stand-in for HuggingFaceH4/ultrachat_200k: splits train_sft and test_sft of messages."""
    from datasets import Dataset, DatasetDict

    def rows(n, tag):
        return [
            {
                "messages": [
                    {"role": "user", "content": f"{tag} question {i}"},
                    {"role": "assistant", "content": f"{tag} answer {i}"},
                ]
            }
            for i in range(n)
        ]

    folder = tmp_path_factory.mktemp("ultrachat") / "ultrachat_200k"
    DatasetDict(
        {"train_sft": Dataset.from_list(rows(1100, "train")), "test_sft": Dataset.from_list(rows(60, "test"))}
    ).save_to_disk(str(folder))
    return str(folder)


# The SFT recipes of alignment-handbook's zephyr-7b-beta (config_full.yaml, config_lora.yaml,
# config_qlora.yaml), as published; the tests change nothing but the model and dataset ids.
ZEPHYR_TEMPLATE = (
    "\"{% for message in messages %}\\n{% if message['role'] == 'user' %}\\n{{ '<|user|>\\n' + message['content'] + eos_token }}"
    "\\n{% elif message['role'] == 'system' %}\\n{{ '<|system|>\\n' + message['content'] + eos_token }}\\n{% elif message['role'] == "
    "'assistant' %}\\n{{ '<|assistant|>\\n'  + message['content'] + eos_token }}\\n{% endif %}\\n{% if loop.last and "
    "add_generation_prompt %}\\n{{ '<|assistant|>' }}\\n{% endif %}\\n{% endfor %}\""
)
MIXTURE = """dataset_mixture:
  datasets:
    - id: HuggingFaceH4/ultrachat_200k
      config: default
      split: train_sft
      columns:
        - messages
      weight: 1.0
    - id: HuggingFaceH4/ultrachat_200k
      config: default
      split: test_sft
      columns:
        - messages
      weight: 1.0
  test_split_size: 1000
  seed: 0
dataset_num_proc: 12
"""
TRAINER = """bf16: true
do_eval: true
gradient_checkpointing: true
gradient_checkpointing_kwargs:
  use_reentrant: false
hub_strategy: every_save
log_level: info
logging_steps: 5
logging_strategy: steps
lr_scheduler_type: cosine
max_steps: -1
num_train_epochs: 1
overwrite_output_dir: true
per_device_eval_batch_size: 8
save_strategy: "steps"
save_steps: 100
save_total_limit: 1
seed: 42
"""
LORA = """use_peft: true
lora_r: 16
lora_alpha: 16
lora_dropout: 0.05
lora_target_modules:
- q_proj
- k_proj
- v_proj
- o_proj
- gate_proj
- up_proj
- down_proj
"""
RECIPES = {
    "full": f"""model_name_or_path: mistralai/Mistral-7B-v0.1
model_revision: main
torch_dtype: bfloat16
attn_implementation: flash_attention_2
chat_template: {ZEPHYR_TEMPLATE}
{MIXTURE}eval_strategy: epoch
gradient_accumulation_steps: 1
hub_model_id: zephyr-7b-sft-full
learning_rate: 2.0e-05
max_seq_length: 2048
output_dir: data/zephyr-7b-sft-full
per_device_train_batch_size: 16
push_to_hub: true
remove_unused_columns: true
report_to:
- wandb
warmup_ratio: 0.1
{TRAINER}""",
    "lora": f"""model_name_or_path: mistralai/Mistral-7B-v0.1
model_revision: main
torch_dtype: float16
{LORA}chat_template: {ZEPHYR_TEMPLATE}
dataset_mixer:
  HuggingFaceH4/ultrachat_200k: 1.0
dataset_splits:
- train_sft
- test_sft
preprocessing_num_workers: 12
evaluation_strategy: epoch
gradient_accumulation_steps: 2
hub_model_id: zephyr-7b-sft-lora
learning_rate: 2.0e-04
max_seq_length: 2048
output_dir: data/zephyr-7b-sft-lora
per_device_train_batch_size: 4
push_to_hub: true
report_to:
- tensorboard
{TRAINER}""",
    "qlora": f"""model_name_or_path: mistralai/Mistral-7B-v0.1
model_revision: main
torch_dtype: bfloat16
attn_implementation: flash_attention_2
load_in_4bit: true
{LORA}chat_template: {ZEPHYR_TEMPLATE}
{MIXTURE}eval_strategy: epoch
gradient_accumulation_steps: 2
hub_model_id: zephyr-7b-sft-qlora
learning_rate: 2.0e-04
max_length: 2048
output_dir: data/zephyr-7b-sft-qlora
per_device_train_batch_size: 4
push_to_hub: true
report_to:
- tensorboard
warmup_ratio: 0.1
{TRAINER}""",
}


def _recipe(kind: str, model: str, data: str, tmp_path: Path) -> str:
    return (
        RECIPES[kind]
        .replace("mistralai/Mistral-7B-v0.1", model)
        .replace("HuggingFaceH4/ultrachat_200k", data)
        .replace("output_dir: data/", f"output_dir: {tmp_path}/data/")
    )


def test_real_recipes_pass_dry_run_unchanged(shell, tiny_model, ultrachat_like, tmp_path, capsys):
    full = shell.run_cell_magic("sft_train", "--dry-run -o full", _recipe("full", tiny_model, ultrachat_like, tmp_path))
    assert full["config"]["lora"] is False and full["run_dir"] == str(tmp_path / "data" / "zephyr-7b-sft-full")
    assert full["train_rows"] == 1160 - 1000 and full["config"]["max_length"] == 2048
    notes = "\n".join(full["notes"])
    for said in (
        "model_name_or_path → model",
        "no use_peft: a full fine-tune, as in TRL",
        "max_seq_length → max_length",
        "warmup_ratio → warmup_steps",
        "dataset_mixture → dataset (a mixture of 2), test_split_size → eval_split 1000",
        "attn_implementation flash_attention_2: needs CUDA",
        "would stop before training: report_to: wandb",
        "would stop before training: push_to_hub",
        "overwrite_output_dir: no effect",
    ):
        assert said in notes, said
    lora = shell.run_cell_magic("sft_train", "--dry-run -o lora", _recipe("lora", tiny_model, ultrachat_like, tmp_path))
    assert lora["config"]["lora"]["r"] == 16 and lora["config"]["lora"]["target_modules"][0] == "q_proj"
    assert lora["config"]["eval_strategy"] == "epoch" and lora["config"]["dataset_num_proc"] == 12
    assert lora["train_rows"] == 1100
    # QLoRA on a CPU: the one-line CUDA reason.
    with pytest.raises(UsageError, match=r"^key 'load_in_4bit' \(QLoRA\) needs a CUDA GPU and bitsandbytes"):
        shell.run_cell_magic("sft_train", "--dry-run", _recipe("qlora", tiny_model, ultrachat_like, tmp_path))
    # Training for real stops before anything starts when an account key cannot work here.
    with pytest.raises(UsageError, match=r"^report_to: tensorboard is not installed here|^push_to_hub: "):
        shell.run_cell_magic("sft_train", "", _recipe("lora", tiny_model, ultrachat_like, tmp_path))
    assert not (tmp_path / "data" / "zephyr-7b-sft-lora").exists()


def test_the_lora_recipe_trains_a_few_steps(shell, tiny_model, ultrachat_like, tmp_path):
    recipe = (
        _recipe("lora", tiny_model, ultrachat_like, tmp_path)
        .replace("max_steps: -1", "max_steps: 3")
        .replace("push_to_hub: true", "push_to_hub: false")
        .replace("- tensorboard", "- none")
        .replace("gradient_checkpointing: true", "gradient_checkpointing: false")
        .replace("evaluation_strategy: epoch", "evaluation_strategy: 'no'")
    )
    run = shell.run_cell_magic("sft_train", "-o run", recipe)
    assert run.status == "finished" and run.global_step == 3
    assert run.path == tmp_path / "data" / "zephyr-7b-sft-lora"
    assert run.tokenizer.chat_template.startswith("{% for message in messages %}")


# -- templates that drop what the data says ----------------------------------------------------------------


def test_a_template_that_drops_tool_calls_is_flagged(shell, tiny_model, tmp_path):
    rows = [
        {
            "messages": [
                {"role": "user", "content": "Weather in Paris?"},
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [
                        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
                    ],
                },
                {"role": "tool", "content": "18C"},
                {"role": "assistant", "content": "It is 18C."},
            ]
        }
    ] * 3
    data = tmp_path / "tools.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = shell.run_line_magic("sft_template", f"{tiny_model} --data {data} -o r")
    checks = {c.name: c for c in r.checks}
    assert (
        not checks["every message rendered"].ok
        and "message 1 (tool call get_weather)" in checks["every message rendered"].detail
    )
    assert not checks["trained answer has content"].ok
    stats = shell.run_line_magic("sft_data", f"{data} --model {tiny_model} -o s")
    assert len(stats.template_drops) == 3 and any("drops content in 3 rows" in n for n in stats.notes)


def test_trust_remote_code_in_a_recipe_is_honoured(shell, tiny_model, qa_jsonl, tmp_path):
    import shutil

    remote = tmp_path / "remote"
    shutil.copytree(tiny_model, remote)
    config = json.loads((remote / "config.json").read_text())
    config.update(
        model_type="xmodel",
        auto_map={"AutoConfig": "configuration_x.XConfig", "AutoModelForCausalLM": "modeling_x.XModel"},
    )
    (remote / "config.json").write_text(json.dumps(config))
    cell = f"model_name_or_path: {remote}\ndataset_name: {qa_jsonl}\nmax_steps: 1\n"
    with pytest.raises(UsageError, match="trust_remote_code is off"):
        shell.run_cell_magic("sft_train", "--name rc --dry-run", cell)
    # Asked for: the model's own code is run (here it is missing: a one-line error that says so).
    with pytest.raises(UsageError) as info:
        shell.run_cell_magic("sft_train", "--name rc --dry-run", cell + "trust_remote_code: true\n")
    assert "trust_remote_code is off" not in str(info.value) and "configuration_x" in str(info.value)
