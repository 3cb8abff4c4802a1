"""What every magic shares: line parsing, the one place where core errors become a
``UsageError``, YAML cell bodies, and the small helpers (binding ``-o NAME``, the display mode,
loading the model behind a target). No magic is defined here."""

from __future__ import annotations

import functools
import shlex

from IPython.core.error import UsageError

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

    return UsageError(scrub_text(" ".join(str(err).split())))


def _parse(magic, line: str):
    """Parse a magic's line with shell quoting rules (``--message "two words"`` is one value,
    without its quotes; IPython's own parse_argstring keeps the quotes)."""
    try:
        argv = shlex.split(line)
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

    def _data(self, source: str):
        from ..core.data import load_data

        return load_data(source, namespace=self.shell.user_ns)

    def _target_model(self, target: str):
        """A run result variable, a run name under output_dir, or anything load_model takes."""

        from ..core.lookup import model_location
        from ..core.models import load_model
        from ..core.train import TrainResult

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
