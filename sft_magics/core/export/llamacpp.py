"""llama.cpp, the runtime people run GGUF models with: its converter and its Python bindings.

- **The converter** is llama.cpp's own ``convert_hf_to_gguf.py`` (no tensor mapping of ours). It
  is taken from the very llama.cpp the installed bindings (``llama-cpp-python``) were built from:
  the bindings' source package on PyPI carries it under ``vendor/llama.cpp``, so the model is
  converted and then verified by one and the same llama.cpp. :func:`converter` unpacks it once
  into ``$SFT_MAGICS_CACHE/llama.cpp/<version>/`` (``pip download`` of that source package: pip's
  cache when it was just installed); ``$SFT_MAGICS_LLAMA_CPP`` may point at a llama.cpp checkout
  instead. The converter runs in its own process with *its own* ``gguf`` package (``gguf-py``
  beside it) first on ``PYTHONPATH``: the ``gguf`` release installed beside transformers (which
  reads the embedded default model) is left exactly as it is.
- **Quantization** beyond what the converter writes (``q4_k_m``, ``q5_k_m``, ``q6_k``, ``q4_0``)
  goes through llama.cpp's own ``llama_model_quantize``, from an f16 conversion.
- **The runtime**: :class:`LlamaCpp` loads a GGUF with the bindings and generates greedily, token
  by token, stopping where llama.cpp stops (its end-of-generation tokens).

Both are the optional extra ``pip install "sft_magics[gguf]"``; everything here imports them
inside functions, and a missing piece is a one-line error that says how to install it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path

from ..errors import ExportError, one_line

INSTALL_HINT = 'pip install "sft_magics[gguf]"'
# outtype -> how it is made: the converter writes these itself ...
CONVERTER_TYPES = ("f32", "f16", "bf16", "q8_0")
# ... and these come from an f16 conversion through llama.cpp's quantizer (llama_ftype names).
QUANTIZER_TYPES = {
    "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K",
    "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
    "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
    "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
}
GGUF_TYPES = (*CONVERTER_TYPES, *QUANTIZER_TYPES)
CONVERT_TIMEOUT_S = 3600


def bindings():
    """The ``llama_cpp`` module, or a one-line error naming the extra to install."""
    try:
        import llama_cpp
    except ImportError:
        raise ExportError(f"GGUF export needs llama.cpp's Python bindings (llama-cpp-python): {INSTALL_HINT}") from None
    return llama_cpp


def bindings_version() -> str:
    return bindings().__version__


# -- the converter ----------------------------------------------------------------------------------


def converter() -> Path:
    """The folder holding llama.cpp's ``convert_hf_to_gguf.py`` and its ``gguf-py``, unpacked from
    the installed bindings' own source package on first use."""
    given = os.environ.get("SFT_MAGICS_LLAMA_CPP")
    if given:
        folder = Path(given).expanduser()
        if not _complete(folder):
            raise ExportError(f"SFT_MAGICS_LLAMA_CPP={given}: no convert_hf_to_gguf.py and gguf-py/ in that folder")
        return folder
    from ..models import cache_dir

    version = bindings_version()
    folder = cache_dir() / "llama.cpp" / version
    if not _complete(folder):
        _unpack_converter(version, folder)
    return folder


def _complete(folder: Path) -> bool:
    return (folder / "convert_hf_to_gguf.py").is_file() and (folder / "gguf-py" / "gguf" / "__init__.py").is_file()


def _unpack_converter(version: str, folder: Path) -> None:
    """``pip download`` llama-cpp-python's source package (the bindings' exact version) and unpack
    the converter files from its ``vendor/llama.cpp``: into a temporary folder renamed into place, so
    a killed download never leaves half a converter behind."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=".download-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--quiet"]
        cmd += ["-d", tmp, f"llama-cpp-python=={version}"]
        hint = "or set SFT_MAGICS_LLAMA_CPP to a llama.cpp checkout"
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        except (OSError, subprocess.TimeoutExpired) as err:
            raise ExportError(
                f"could not run pip to fetch llama.cpp's converter ({type(err).__name__}); {hint}"
            ) from None
        archives = sorted(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        if done.returncode != 0 or not archives:
            why = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no source archive"]
            raise ExportError(
                f"could not fetch llama.cpp's converter (the source of llama-cpp-python {version}): {why[0][:200]}; {hint}"
            )
        staging = Path(tmp) / "llama.cpp"
        try:
            _extract_converter(archives[0], staging)
        except (tarfile.TarError, OSError) as err:
            raise ExportError(f"could not unpack llama.cpp's converter from {archives[0].name}: {err}") from None
        if not _complete(staging):
            raise ExportError(f"llama-cpp-python {version}'s source has no vendor/llama.cpp converter and gguf-py")
        if _complete(folder):
            return  # another export unpacked it meanwhile: use theirs
        if folder.exists():  # a stale, incomplete one (no export can be using it): moved aside, then removed
            aside = folder.with_name(f".stale-{os.getpid()}-{folder.name}")
            folder.rename(aside)
            shutil.rmtree(aside, ignore_errors=True)
        try:
            staging.rename(folder)
        except OSError:
            if not _complete(folder):
                raise


def _extract_converter(archive: Path, staging: Path) -> None:
    """Only the converter's files, only plain files and folders, only paths inside ``staging``."""
    wanted = ("convert_hf_to_gguf.py", "LICENSE")
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            _, _, inner = member.name.partition("/vendor/llama.cpp/")
            parts = Path(inner).parts
            if not inner or Path(inner).is_absolute() or ".." in parts or not (member.isfile() or member.isdir()):
                continue
            if inner in wanted or parts[0] in ("conversion", "gguf-py"):
                member.name = inner
                if hasattr(tarfile, "data_filter"):
                    tar.extract(member, staging, filter="data")
                else:  # Python < 3.10.12: the checks above are the filter
                    tar.extract(member, staging)


def convert(model_dir: Path, out_file: Path, outtype: str, log: Path) -> None:
    """Run llama.cpp's converter on a transformers folder; its output goes to ``log``. A failure is
    one line: the converter's last error line, and where the whole log is."""
    if outtype in QUANTIZER_TYPES:
        f16 = out_file.with_name(out_file.stem + ".f16-intermediate.gguf")
        try:
            convert(model_dir, f16, "f16", log)
            quantize(f16, out_file, outtype)
        finally:
            f16.unlink(missing_ok=True)
        return
    if outtype not in CONVERTER_TYPES:
        raise ExportError(f"--gguf {outtype!r}: choose one of {', '.join(GGUF_TYPES)}")
    tools = converter()
    env = converter_env(tools)
    cmd = [sys.executable, str(tools / "convert_hf_to_gguf.py"), str(model_dir), "--outfile", str(out_file)]
    cmd += ["--outtype", outtype]
    try:
        with open(log, "a", encoding="utf-8") as out:
            done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, timeout=CONVERT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        out_file.unlink(missing_ok=True)
        raise ExportError(f"llama.cpp's converter ran past {CONVERT_TIMEOUT_S} s; its output is in {log}") from None
    if done.returncode != 0 or not out_file.is_file():
        out_file.unlink(missing_ok=True)  # half a GGUF is no use, and may be what filled the disk
        raise ExportError(f"llama.cpp's converter failed: {_last_error(log)} (whole output: {log})")


def converter_env(tools: Path) -> dict[str, str]:
    """The converter's environment: its own ``gguf-py`` first on the path, ahead of the installed one."""
    path = [str(tools / "gguf-py"), str(tools)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    env.pop("PYTHONSTARTUP", None)
    return env


def _last_error(log: Path) -> str:
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        lines = []
    errors = [ln for ln in lines if "Error" in ln or "error" in ln]
    return (errors or lines or ["no output"])[-1][:300]


def quantize(src: Path, dst: Path, outtype: str) -> None:
    """llama.cpp's own quantizer (``llama_model_quantize``), on the CPU's cores."""
    llama_cpp = bindings()
    from llama_cpp._utils import suppress_stdout_stderr

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANTIZER_TYPES[outtype])
    params.nthread = os.cpu_count() or 1
    with suppress_stdout_stderr(disable=False):  # llama.cpp logs every tensor to the process's stderr
        failed = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params) != 0
    if failed or not dst.is_file():
        dst.unlink(missing_ok=True)
        raise ExportError(f"llama.cpp could not quantize {src.name} to {outtype} (is the disk full?)")


# -- the runtime ------------------------------------------------------------------------------------


class LlamaCpp:
    """A GGUF loaded in llama.cpp (through the bindings), for greedy generation."""

    def __init__(self, path: Path, n_ctx: int = 4096):
        llama_cpp = bindings()
        from llama_cpp import Llama

        try:
            self.llm = Llama(str(path), n_ctx=n_ctx, n_threads=os.cpu_count() or 1, verbose=False, seed=0)
        except Exception as err:  # the bindings raise ValueError with llama.cpp's one-line reason
            raise ExportError(f"llama.cpp could not load {path.name}: {one_line(err, 240)}") from None
        self._lib = llama_cpp
        self.metadata: dict[str, str] = dict(self.llm.metadata)

    def close(self) -> None:
        self.llm.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def is_eog(self, token: int) -> bool:
        """Whether llama.cpp ends generation at ``token`` (its EOS, EOT and end-of-generation set)."""
        return bool(self._lib.llama_vocab_is_eog(self.llm._model.vocab, int(token)))

    def token_id(self, key: str) -> int | None:
        value = self.metadata.get(f"tokenizer.ggml.{key}_token_id")
        return int(value) if value is not None else None

    def piece(self, token: int) -> str:
        return self.llm._model.token_get_text(int(token))

    def tokenize(self, text: str) -> list[int]:
        """The prompt's ids as llama.cpp reads it: special tokens parsed, no BOS added (the chat
        template writes one itself where the model wants it)."""
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def render(self, messages: list[dict]) -> str:
        """The conversation through the GGUF's *embedded* chat template, with llama-cpp-python's
        own formatter (what ``Llama.create_chat_completion`` uses)."""
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        template = self.metadata.get("tokenizer.chat_template")
        if not template:
            raise ExportError("the GGUF has no chat template (tokenizer.chat_template): llama.cpp cannot chat with it")
        bos, eos = self.token_id("bos"), self.token_id("eos")
        formatter = Jinja2ChatFormatter(
            template=template,
            bos_token=self.piece(bos) if bos is not None else "",
            eos_token=self.piece(eos) if eos is not None else "",
        )
        from ..template.render import bounded

        with bounded(template, " in llama.cpp's chat formatter"):  # llama-cpp-python renders it with its own Jinja
            return formatter(messages=messages).prompt

    def greedy(self, ids: Sequence[int], max_new_tokens: int) -> tuple[list[int], int | None]:
        """Greedy continuation of ``ids``: the generated ids (without the stop token) and the
        end-of-generation token that ended it (None: it ran into ``max_new_tokens``)."""
        out: list[int] = []
        for token in self.llm.generate(list(ids), top_k=1, temp=0.0, repeat_penalty=1.0, reset=True):
            if self.is_eog(token):
                return out, int(token)
            out.append(int(token))
            if len(out) >= max_new_tokens:
                break
        return out, None

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.llm.detokenize(list(ids)).decode("utf-8", errors="replace")
