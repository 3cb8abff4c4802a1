"""Secrets never reach disk or the screen.

Redaction is **by key**, at any depth (``hub_token``, a ``token`` nested under
``model_init_kwargs``, ``wandb_api_key``, ``password``), never by substring: ``eos_token``,
``pad_token`` and ``max_new_tokens`` are settings, not secrets, and are kept. Free text (the cell
as typed, a traceback, an error message) is scrubbed of values that look like credentials
(``hf_...``, ``sk-...``, ``ghp_...``) and of ``key: value`` lines whose key is a secret key.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

REDACTED = "<redacted>"

# Keys that hold credentials, compared case-insensitively as whole keys.
SECRET_KEYS = frozenset(
    {
        "token",
        "hub_token",
        "hf_token",
        "access_token",
        "auth_token",
        "use_auth_token",
        "api_key",
        "apikey",
        "password",
        "passwd",
        "secret",
        "client_secret",
        "private_key",
        "wandb_api_key",
        "comet_api_key",
        "mlflow_tracking_token",
        "neptune_api_token",
        "openai_api_key",
    }
)
# ... and keys ending like these (``my_service_api_key``, ``db_password``).
SECRET_SUFFIXES = ("_api_key", "_apikey", "_password", "_secret", "_access_token", "_auth_token", "_hub_token")

# Values that look like credentials wherever they appear.
_TOKEN_VALUE = re.compile(
    r"\b(?:hf_[A-Za-z0-9]{16,}|api_org_[A-Za-z0-9]{16,}|sk-[A-Za-z0-9_-]{16,}|gh[pousr]_[A-Za-z0-9]{20,}"
    r"|github_pat_[A-Za-z0-9_]{20,}|xox[abpr]-[A-Za-z0-9-]{10,}|AKIA[0-9A-Z]{16})\b"
)


def is_secret_key(key: Any) -> bool:
    if not isinstance(key, str):
        return False
    k = key.strip().strip("\"'").lower()
    return k in SECRET_KEYS or k.endswith(SECRET_SUFFIXES)


def redact(value: Any) -> Any:
    """A copy with every secret key's value replaced by ``<redacted>`` (at any depth) and every
    credential-looking string scrubbed."""
    if isinstance(value, Mapping):
        return {
            k: (REDACTED if is_secret_key(k) and v not in (None, "", False) else redact(v)) for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return type(value)(redact(v) for v in value)
    if isinstance(value, str):
        return scrub_text(value)
    return value


def split_secrets(config: Mapping[str, Any]) -> tuple[dict, dict]:
    """``(clean, secrets)``: ``clean`` has every secret key removed (at any depth), ``secrets`` holds
    them by their path (``("model_init_kwargs", "token")``) so they can be put back in memory."""
    secrets: dict[tuple, Any] = {}

    def walk(value: Any, path: tuple) -> Any:
        if isinstance(value, Mapping):
            out = {}
            for k, v in value.items():
                if is_secret_key(k) and v not in (None, "", False):
                    secrets[(*path, k)] = v
                else:
                    out[k] = walk(v, (*path, k))
            return out
        if isinstance(value, list):
            return [walk(v, (*path, i)) for i, v in enumerate(value)]
        return value

    return walk(dict(config), ()), secrets


def merge_secrets(config: Mapping[str, Any], secrets: Mapping[tuple, Any]) -> dict:
    """Put secrets from :func:`split_secrets` back into a (copy of a) config."""
    import copy

    out = copy.deepcopy(dict(config))
    for path, value in secrets.items():
        node = out
        for k in path[:-1]:
            node = node[k] if isinstance(node, list) else node.setdefault(k, {})
        node[path[-1]] = value
    return out


_KEY_LINE = re.compile(
    r"""^(?P<head>\s*-?\s*["']?(?P<key>[A-Za-z_][\w.-]*)["']?\s*[:=]\s*)(?P<value>[^#\n]*?)(?P<tail>\s*(?:#.*)?)$"""
)


def scrub_text(text: str) -> str:
    """Free text with credentials removed: credential-looking values anywhere (comments too), and
    the value of any ``key: value`` / ``key=value`` line whose key is a secret key (YAML cells,
    flow mappings, ``KEY=VALUE`` arguments)."""
    if not text:
        return text
    text = _TOKEN_VALUE.sub(REDACTED, text)
    lines = []
    for line in text.split("\n"):
        m = _KEY_LINE.match(line)
        if m and is_secret_key(m.group("key")) and m.group("value").strip() not in ("", "null", "~", REDACTED):
            line = f"{m.group('head')}{REDACTED}{m.group('tail')}"
        lines.append(_scrub_inline(line))
    return "\n".join(lines)


_INLINE = re.compile(
    r"""(?P<key>["']?[A-Za-z_][\w-]*["']?)(?P<sep>\s*:\s*|\s*=\s*)(?P<value>"[^"]*"|'[^']*'|[^,{}\[\]\s]+)"""
)


def _scrub_inline(line: str) -> str:
    """``{token: abc, r: 8}`` inside a line: the secret key's value goes."""

    def repl(m: re.Match) -> str:
        if is_secret_key(m.group("key")) and m.group("value") not in (REDACTED, "null", "~"):
            return f"{m.group('key')}{m.group('sep')}{REDACTED}"
        return m.group(0)

    return _INLINE.sub(repl, line)
