"""What every magic shares: line parsing, the one place where core errors become a
``UsageError``, YAML cell bodies, and the small helpers (binding ``-o NAME``, the display mode,
loading the model behind a target). No magic is defined here."""

from __future__ import annotations

import functools
import re
import shlex

from IPython.core.error import UsageError

from ..core.errors import one_line
from ..display import detect_mode


def _user_errors(method):
    """Turn the core's user-facing errors (every ``SftError``) into a one-line UsageError: the one
    place where that conversion happens. Credentials in the message are scrubbed."""
    from ..core.errors import SftError

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except SftError as err:
            raise _usage_error(err) from None

    return wrapper


def _usage_error(err: BaseException) -> UsageError:
    from ..core.secrets import scrub_text

    return UsageError(scrub_text(one_line(err, None)))


def strip_comment(line: str) -> str:
    """The line without a trailing comment, read as a shell reads it: ``#`` at the start of a word,
    outside quotes, begins a comment (``--name run#2`` and ``--message "is #1"`` keep theirs)."""
    quote, word_start, i = None, True, 0
    while i < len(line):
        c = line[i]
        if quote:
            if c == "\\" and quote == '"':
                i += 2
                continue
            if c == quote:
                quote = None
        elif c == "\\":
            i, word_start = i + 2, False
            continue
        elif c in "'\"":
            quote = c
        elif c == "#" and word_start:
            return line[:i].rstrip()
        word_start = c.isspace()
        i += 1
    return line


def _parse(magic, line: str):
    """Parse a magic's line with shell quoting rules (``--message "two words"`` is one value,
    without its quotes; IPython's own parse_argstring keeps the quotes), and a trailing ``# ...``
    as a comment, as in a shell."""
    try:
        argv = shlex.split(strip_comment(line))
    except ValueError as err:
        raise UsageError(f"bad arguments: {err} in {line!r}") from None
    try:
        return magic.parser.parse_args(argv)
    except UsageError:
        raise
    except SystemExit:  # argparse's --help or error exit
        raise UsageError(f"bad arguments: {line!r}") from None


class MagicsBase:
    """Helpers of the magics mixins (the traits live on ``SftMagics``)."""

    @property
    def mode(self) -> str:
        return detect_mode(self.display)

    def _bind(self, name: str | None, value):
        if name:
            self.shell.user_ns[name] = value
        return value

    def _data(self, source: str, **mapping):
        from ..core.data.load import load_data

        return load_data(source, namespace=self.shell.user_ns, **mapping)

    def _resolve_target(self, target):
        """``SWEEP:best``: the sweep's best trial (magics/sweep.py); any other target is itself."""
        from ..core.sweep import best_trial

        if isinstance(target, str) and target.endswith(":best") and target.count(":") == 1:
            return best_trial(self.output_dir, target[: -len(":best")])
        return target

    def _target_model(self, target: str):
        """A run result variable, a run name under output_dir, or anything load_model takes."""

        from ..core.models import load_model
        from ..core.run.lookup import model_location
        from ..core.train.trainer import TrainResult

        value = self.shell.user_ns.get(target)
        if isinstance(value, TrainResult) and value.model is not None:
            return value.model, value.tokenizer
        location = model_location(target, self.output_dir)
        loaded = load_model(location, trust_remote_code=self.trust_remote_code)
        return loaded.model, loaded.tokenizer


def _failure_line(record: dict) -> str:
    """One line for a run that failed (or whose process vanished): what, where it got to, why."""
    cause = record.get("error") or "its process ended without a final status"
    hint = f" — {record['hint']}" if record.get("hint") else ""
    return f"run '{record['name']}' {record['status']} at step {record.get('steps') or 0}: {cause}{hint}"


def _conversation(value, where: str) -> list[dict]:
    """A list of message dicts with a string role; content a string (or None beside tool_calls)."""
    if not isinstance(value, list) or not value:
        raise UsageError(f"{where}: expected a non-empty list of messages, got {type(value).__name__}")
    for i, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise UsageError(f"{where}: message {i} needs a 'role' string")
        if not isinstance(m.get("content"), str) and not m.get("tool_calls"):
            raise UsageError(f"{where}: message {i} ({m['role']}) needs a 'content' string")
    return value


def _yaml_body(text: str, where: str):
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise UsageError(f"invalid YAML in {where}{at}: {problem}") from None


_PLAIN = re.compile(r"^[A-Za-z0-9_./~+-][A-Za-z0-9_./~+@=-]*$")  # safe unquoted inside a YAML scalar
_ESCAPED = re.compile(r"\{\{([A-Za-z_][\w.]*)\}\}")
_VARIABLE = re.compile(r"(?<![{\\])\{([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)\}(?!})")


def expand_variables(text: str, namespace: dict) -> str:
    """``{name}`` in a cell body becomes the notebook variable's value, as IPython does for line
    magics: plain words and paths as they are (so ``{DATA}/train.jsonl`` works), other text, numbers,
    booleans and None as YAML scalars (quoted, so any text is safe), a list of those as a YAML list;
    other objects (a DataFrame, a function) by their name, which the keys that take data or
    functions resolve in the notebook. ``{{name}}`` is a literal ``{name}``. Lines holding Jinja
    (``{%``) are left as they are."""
    import json

    def value(m: re.Match) -> str:
        path = m.group(1)
        root, *attrs = path.split(".")
        if root not in namespace:
            raise UsageError(
                f"the cell names {{{path}}}, but there is no notebook variable '{root}' "
                f"(write {{{{{path}}}}} for a literal {{{path}}})"
            )
        obj = namespace[root]
        for attr in attrs:
            if not hasattr(obj, attr):
                raise UsageError(f"the cell names {{{path}}}, but '{root}' has no attribute '{attr}'")
            obj = getattr(obj, attr)
        if isinstance(obj, str) and _PLAIN.match(obj):
            return obj  # a plain word or path: written as is, so "{DATA}/train.jsonl" works
        scalar = (str, int, float, bool, type(None))
        if isinstance(obj, scalar):
            return json.dumps(obj)  # anything else as a quoted YAML scalar: any text is safe
        if isinstance(obj, (list, tuple)) and all(isinstance(v, scalar) for v in obj):
            return json.dumps(list(obj))  # a list of scalars as a YAML flow list (a sweep's values)
        if attrs:
            raise UsageError(
                f"{{{path}}} is a {type(obj).__name__}: only text and numbers can be written into the cell"
            )
        return root

    lines = []
    for line in text.split("\n"):
        if "{%" not in line:
            line = _ESCAPED.sub(lambda m: "\x00" + m.group(1) + "\x01", line)
            line = _VARIABLE.sub(value, line).replace("\x00", "{").replace("\x01", "}")
        lines.append(line)
    return "\n".join(lines)


def data_mapping(columns: str | None, system: str | None, convert: str | None, namespace: dict) -> dict:
    """``--columns prompt=question,completion=answer``, ``--system TEXT``, ``--convert FUNC`` as
    ``load_data`` keywords."""
    out: dict = {}
    if columns:
        pairs = [p.strip() for p in columns.split(",") if p.strip()]
        bad = next(
            (p for p in pairs if "=" not in p or not p.split("=", 1)[0].strip() or not p.split("=", 1)[1].strip()), None
        )
        if bad is not None:
            raise UsageError(f"--columns {columns!r}: expected NAME=COLUMN pairs separated by commas, got {bad!r}")
        out["columns"] = {k.strip(): v.strip() for k, v in (p.split("=", 1) for p in pairs)}
    if system:
        out["system"] = system
    if convert:
        if not callable(namespace.get(convert)):
            raise UsageError(f"--convert: no notebook function named '{convert}'")
        out["convert"] = namespace[convert]
    return out


def attach_dashboard(run_dir, mode: str, *, follow_live: bool):
    """Show a dashboard fed from ``metrics.jsonl``: the whole history, then (``follow_live``) new
    events as they arrive, on a background thread that only updates widget values."""
    import threading
    from pathlib import Path

    from ..core.train import worker as w
    from ..display import make_reporter

    run_dir = Path(run_dir)
    reporter = make_reporter(mode, title=run_dir.name, on_stop=lambda: w.request_stop(run_dir))
    if follow_live and mode == "widget":
        threading.Thread(
            target=w.follow, args=(run_dir, reporter), name=f"sft-follow-{run_dir.name}", daemon=True
        ).start()
    else:
        w.follow(run_dir, reporter, until_final=False)  # replay what is there, here and now
        reporter.close()
    return reporter
