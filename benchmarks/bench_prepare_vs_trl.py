"""Benchmark: preparing conversations for training, ours against TRL's own tokenization.

    python benchmarks/bench_prepare_vs_trl.py [--rows 1000 4000 16000] [--rounds 3] [--turns 6]

Both sides turn the same multi-turn conversations (``bench_prepare.conversations``: ``--turns``
exchanges of the bundled task per row) into ``input_ids`` + ``assistant_masks`` with
SmolLM2-135M-Instruct's tokenizer and its ChatML template *with* ``{% generation %}`` markers (what
TRL needs for ``assistant_only_loss``; TRL would patch one in itself):

- (a) ours: ``core.prepared.to_trl_rows`` (batched chunks of 1,000 rows, cache off), one process,
  then TRL's own remaining step on those rows (``labels`` from the masks), as in training;
- (b) TRL: ``SFTTrainer._prepare_dataset`` with ``assistant_only_loss=True`` — the code TRL runs
  on a conversational dataset before training (a trainer on a tiny model is built once, untimed);
- (c) as (a) with ``dataset_num_proc`` = the machine's cores (TRL's own name for the same thing).

The ``input_ids`` and ``labels`` of (a), (b) and (c) are checked equal on every row first. The sides alternate
(a b c, c b a, ...) in one process, fresh ``datasets`` caches off; printed: rows/s of each and
the ratios a/b and c/b (goal ≥ 1.0) with every round, and rows/s per 1,000 rows to show it is
linear.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_prepare import conversations

MARKED_CHATML = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}"
    "{% endif %}"
    "{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\\n' }}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1000, 4000, 16000])
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    import datasets
    from transformers import LlamaConfig, LlamaForCausalLM
    from trl import SFTConfig, SFTTrainer

    from sft_magics.core.data.load import load_data
    from sft_magics.core.models import load_tokenizer
    from sft_magics.core.template.prepared import to_trl_rows

    datasets.disable_caching()
    datasets.disable_progress_bars()
    tokenizer = load_tokenizer("smollm2-135m")
    tokenizer.chat_template = MARKED_CHATML
    cores = os.cpu_count() or 1
    tiny = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
        )
    )
    config = SFTConfig(
        output_dir=tempfile.mkdtemp(), assistant_only_loss=True, report_to=[], max_length=None, bf16=False, use_cpu=True
    )
    first = datasets.Dataset.from_list(conversations(8, args.turns))
    trainer = SFTTrainer(model=tiny, args=config, train_dataset=first, processing_class=tokenizer)

    def theirs(data, raw):
        return trainer._prepare_dataset(raw, tokenizer, config, False, None, "train")

    def ours(data, raw):
        return theirs(data, to_trl_rows(data, tokenizer, cache=False))

    def ours_parallel(data, raw):
        return theirs(data, to_trl_rows(data, tokenizer, cache=False, num_proc=cores))

    sides = {"a": ours, "b": theirs, "c": ours_parallel}
    for n in args.rows:
        rows = conversations(n, args.turns)
        data, raw = load_data(rows), datasets.Dataset.from_list(rows)
        results = {k: f(data, raw) for k, f in sides.items()}
        want = list(zip(results["b"]["input_ids"], results["b"]["labels"]))
        assert any(-100 in labels for _, labels in want), "TRL masked nothing"
        for k in "ac":
            got = list(zip(results[k]["input_ids"], results[k]["labels"]))
            assert got == want, f"side {k} differs from TRL"
        tokens = sum(len(ids) for ids, _ in want) / n
        speed = {k: [] for k in sides}
        for r in range(args.rounds):
            for k in "abc" if r % 2 == 0 else "cba":
                t = time.perf_counter()
                sides[k](data, raw)
                speed[k].append(n / (time.perf_counter() - t))
        a_b = [x / y for x, y in zip(speed["a"], speed["b"])]
        c_b = [x / y for x, y in zip(speed["c"], speed["b"])]
        print(
            f"{n:>6} conversations ({tokens:.0f} tokens): ours {statistics.median(speed['a']):,.0f} rows/s, "
            f"TRL {statistics.median(speed['b']):,.0f} rows/s, ours on {cores} processes "
            f"{statistics.median(speed['c']):,.0f} rows/s; ours/TRL {statistics.median(a_b):.2f}x "
            f"(rounds {', '.join(f'{x:.2f}' for x in a_b)}), {cores} processes/TRL {statistics.median(c_b):.2f}x "
            f"(rounds {', '.join(f'{x:.2f}' for x in c_b)})",
            flush=True,
        )


if __name__ == "__main__":
    main()
