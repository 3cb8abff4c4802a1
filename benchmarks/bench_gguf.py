"""Benchmark: the tuned model as a GGUF in llama.cpp against the same model in the notebook.

    python benchmarks/bench_gguf.py [--run runs/demo] [--type q8_0] [--out /tmp/gguf-bench]

``--run``: a finished run folder (``python -m sft_magics demo`` makes ``runs/demo``); without it the
demo's run is trained first (about 9 minutes on 2 cores). The run's ``final/`` model is exported
with ``%sft_export``'s path (``export_model(..., gguf=TYPE)``, verified on the run's first eval
prompts), then both runtimes answer all of ``examples/data/val.jsonl`` greedily (48 new tokens, as
the demo's evaluation), one prompt at a time (batch 1 on both sides: the way llama.cpp serves a
chat), and the answers are scored with ``%sft_eval``'s ``json_match``.

Prints, side by side: json_match of each runtime (goal: llama.cpp within 2.5 points of the
notebook model), how many answers are identical, the GGUF's size against the safetensors weights,
and decoding tokens/s of each (the transformers model in fp32, as the notebook holds it).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VAL = ROOT / "examples" / "data" / "val.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", default=None, help="a finished run folder (default: train the demo's run)")
    parser.add_argument("--type", default="q8_0")
    parser.add_argument("--out", default=None)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    args = parser.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "passive")

    import torch

    from sft_magics.core.data.load import load_data
    from sft_magics.core.evaluate.evaluation import examples_from
    from sft_magics.core.evaluate.generation import render_prompts, stop_token_ids
    from sft_magics.core.evaluate.metrics import json_match
    from sft_magics.core.export.folder import export_model
    from sft_magics.core.export.llamacpp import LlamaCpp
    from sft_magics.core.export.source import eval_probes, export_source
    from sft_magics.core.models import load_model

    work = Path(args.out or tempfile.mkdtemp(prefix="bench-gguf-"))
    run = Path(args.run) if args.run else None
    if run is None:
        from sft_magics.demo import run_demo

        run_demo(output_dir=str(work / "runs"))
        run = work / "runs" / "demo"
    loaded = load_model(str(run / "final"))
    model, tok = loaded.model.eval(), loaded.tokenizer
    start = time.perf_counter()
    result = export_model(
        model,
        tok,
        work / "export",
        merge=True,
        force=True,
        gguf=args.type,
        gguf_probes=eval_probes(run),
        source=export_source(str(run), run),
    )
    export_s = time.perf_counter() - start
    g = result.gguf
    print(f"export: {export_s:.1f} s; {g.file} {g.size_mb:.1f} MB; probes: {[p.agreement() for p in g.probes]}")

    examples = examples_from(load_data(str(VAL)))
    stops = stop_token_ids(model, tok)
    texts = render_prompts(tok, [e.prompt for e in examples])
    nb_answers, nb_tokens, nb_s = [], 0, 0.0
    for text in texts:
        ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
        t = time.perf_counter()
        with torch.no_grad():
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=args.max_new_tokens,
                do_sample=False,
                eos_token_id=stops,
                pad_token_id=tok.pad_token_id,
            )
        nb_s += time.perf_counter() - t
        new = out[0, ids.shape[1] :].tolist()
        nb_tokens += len(new)
        nb_answers.append(tok.decode([i for i in new if i not in stops], skip_special_tokens=True))

    ll_answers, ll_tokens, ll_s = [], 0, 0.0
    with LlamaCpp(work / "export" / g.file) as llm:
        for e in examples:
            ids = llm.tokenize(llm.render(e.prompt))
            t = time.perf_counter()
            new, stop = llm.greedy(ids, args.max_new_tokens)
            ll_s += time.perf_counter() - t
            ll_tokens += len(new) + (stop is not None)
            ll_answers.append(llm.detokenize(new))

    nb_score = sum(json_match(a, e.reference) for a, e in zip(nb_answers, examples)) / len(examples)
    ll_score = sum(json_match(a, e.reference) for a, e in zip(ll_answers, examples)) / len(examples)
    same = sum(a == b for a, b in zip(nb_answers, ll_answers))
    weights = sum(f.stat().st_size for f in (work / "export").glob("*.safetensors")) / 1e6
    summary = {
        "rows": len(examples),
        "type": g.outtype,
        "json_match_notebook": round(nb_score * 100, 1),
        "json_match_llama_cpp": round(ll_score * 100, 1),
        "difference_points": round((ll_score - nb_score) * 100, 1),
        "identical_answers": same,
        "gguf_mb": g.size_mb,
        "safetensors_mb": round(weights, 1),
        "tokens_per_s_llama_cpp": round(ll_tokens / ll_s, 1),
        "tokens_per_s_transformers": round(nb_tokens / nb_s, 1),
        "speed_ratio": round((ll_tokens / ll_s) / (nb_tokens / nb_s), 2),
        "export_s": round(export_s, 1),
        "probes": [p.agreement() for p in g.probes],
    }
    print(json.dumps(summary, indent=2))
    (work / "bench_gguf.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
