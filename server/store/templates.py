"""An adapter's own chat template, read from its tokenizer files next to adapter_config.json.

A fine-tune often changes the prompt format (ChatML on a base that speaks Llama's format, say): PEFT saves the
tokenizer with the adapter, and transformers writes its template to `chat_template.jinja` (recent versions) or
to the `chat_template` key of `tokenizer_config.json` (older ones; a string, or a list of named templates of
which "default" is used). The first found, in that order, overrides the base's template for that adapter only,
in /v1/chat/completions and /tokenize with messages. It is read and compiled at load, with the adapter's
files: a template that does not compile fails the load (422), never a chat later.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from adapters_core.errors import AdapterConfigError

TEMPLATE_FILE = "chat_template.jinja"
TOKENIZER_CONFIG = "tokenizer_config.json"


def read_chat_template(read: Callable[[str], bytes | None], origin: str) -> str | None:
    """The adapter's chat template, or None when its files have none. `read(filename)` returns a file's bytes
    (None when absent), within the source's size and path rules."""
    data = read(TEMPLATE_FILE)
    if data is not None:
        return _checked(_text(data, f"{origin}: {TEMPLATE_FILE}"), f"{origin}: {TEMPLATE_FILE}")
    data = read(TOKENIZER_CONFIG)
    if data is None:
        return None
    where = f"{origin}: {TOKENIZER_CONFIG}"
    try:
        config = json.loads(_text(data, where))
    except json.JSONDecodeError as exc:
        raise AdapterConfigError(f"{where} is not valid JSON ({exc}).") from None
    template = config.get("chat_template") if isinstance(config, dict) else None
    if isinstance(template, list):  # named templates: [{"name": "default", "template": "..."}, ...]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    if template is None:
        return None
    if not isinstance(template, str):
        raise AdapterConfigError(
            f"{where}: chat_template must be a string (or named templates with a default)."
        )
    return _checked(template, f"{where} chat_template")


def _text(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise AdapterConfigError(f"{where} is not valid UTF-8 ({exc}).") from None


def _checked(template: str, where: str) -> str:
    """`template` once it compiles in the sandbox transformers renders chat templates in."""
    try:
        ImmutableSandboxedEnvironment(extensions=["jinja2.ext.loopcontrols"]).parse(template)
    except jinja2.TemplateError as exc:
        raise AdapterConfigError(
            f"{where} is not a valid Jinja template ({exc}); fix or remove it."
        ) from None
    return template
