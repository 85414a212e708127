"""Adapter configs: the common base, `TaskType` and `PeftType`; `from_dict` finds a method's class in registry.py.

A config reads and writes `adapter_config.json` exactly as PEFT does (reference §2): JSON values override
keyword arguments, unknown keys from newer PEFT versions are dropped with a warning, `peft_type` is required,
and every method declares the keys it cannot do without.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import os
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

from .config_checks import Number, check_bools, check_depth, check_names, check_numbers
from .errors import AdapterConfigError
from .peft_names import CONFIG_NAME
from .registry import get_method

PEFT_FORMAT_VERSION = "0.21.2"  # written as `peft_version`: the PEFT release whose format we follow


class TaskType(str, enum.Enum):  # noqa: UP042 - str mixin keeps str()/format PEFT-like
    """PEFT's task types; the value selects the model wrapper (reference §13.1)."""

    SEQ_CLS = "SEQ_CLS"
    SEQ_2_SEQ_LM = "SEQ_2_SEQ_LM"
    CAUSAL_LM = "CAUSAL_LM"
    TOKEN_CLS = "TOKEN_CLS"
    QUESTION_ANS = "QUESTION_ANS"
    FEATURE_EXTRACTION = "FEATURE_EXTRACTION"


class PeftType(str, enum.Enum):  # noqa: UP042
    """PEFT 0.21.2's method names (PEFT's own enum, so PEFT code keeps working).

    Which of them Swapyard implements is the method table's business (registry.py), not this enum's: a
    config naming any other is refused with the list of those it does.
    """

    PROMPT_TUNING = "PROMPT_TUNING"
    MULTITASK_PROMPT_TUNING = "MULTITASK_PROMPT_TUNING"
    P_TUNING = "P_TUNING"
    PREFIX_TUNING = "PREFIX_TUNING"
    LORA = "LORA"
    ADALORA = "ADALORA"
    ADAMSS = "ADAMSS"
    BOFT = "BOFT"
    ADAPTION_PROMPT = "ADAPTION_PROMPT"
    IA3 = "IA3"
    BEFT = "BEFT"
    LILY = "LILY"
    LOHA = "LOHA"
    LOKR = "LOKR"
    OFT = "OFT"
    POLY = "POLY"
    LN_TUNING = "LN_TUNING"
    VERA = "VERA"
    FROD = "FROD"
    PVERA = "PVERA"
    FOURIERFT = "FOURIERFT"
    GLORA = "GLORA"
    XLORA = "XLORA"
    HRA = "HRA"
    VBLORA = "VBLORA"
    UNILORA = "UNILORA"
    CPT = "CPT"
    MISS = "MISS"
    RANDLORA = "RANDLORA"
    ROAD = "ROAD"
    TRAINABLE_TOKENS = "TRAINABLE_TOKENS"
    HIRA = "HIRA"
    SHIRA = "SHIRA"
    C3A = "C3A"
    WAVEFT = "WAVEFT"
    OSF = "OSF"
    DELORA = "DELORA"
    GRALORA = "GRALORA"
    CARTRIDGE = "CARTRIDGE"
    TINYLORA = "TINYLORA"
    PSOFT = "PSOFT"
    PEANUT = "PEANUT"
    SHADOW = "SHADOW"
    SUPERTUNING = "SUPERTUNING"
    DEFT = "DEFT"


def _enum_value(v: Any) -> Any:
    return v.value if isinstance(v, enum.Enum) else v


# Module-name fields (whichever a config has): a list of names, or a regex string where PEFT allows one.
_NAME_FIELDS = ("target_modules", "exclude_modules", "feedforward_modules", "layers_pattern")


@dataclass
class AdapterConfig:
    """Fields common to every PEFT config (PEFT's `PeftConfig`).

    Subclasses are dataclasses that set `PEFT_TYPE`, may set `REQUIRED_KEYS` (keys a file must carry)
    and `NUMBERS` (their numeric fields' rules, config_checks.py; a subclass's table extends its bases'),
    and validate themselves in `__post_init__` with messages that say how to fix a bad value. Here, before
    any subclass looks at a value: every declared number is checked, every `bool` field is a real boolean,
    and module-name fields are strings.
    """

    PEFT_TYPE: ClassVar[str]  # PEFT's name (a PeftType member for PEFT's methods); set by each method
    PROMPT_LEARNING: ClassVar[bool] = False  # virtual tokens, no injected layers (PromptLearningConfig)
    REQUIRED_KEYS: ClassVar[tuple[str, ...]] = ("peft_type",)
    NUMBERS: ClassVar[dict[str, Number]] = {}

    task_type: TaskType | str | None = None
    peft_type: PeftType | str | None = None
    auto_mapping: dict[str, Any] | None = None
    peft_version: str | None = None
    base_model_name_or_path: str | None = None
    revision: str | None = None
    inference_mode: bool = False

    def __post_init__(self) -> None:
        if getattr(type(self), "PEFT_TYPE", None) is not None:
            self.peft_type = type(self).PEFT_TYPE
        if self.task_type is not None:
            try:
                self.task_type = TaskType(_enum_value(self.task_type))
            except ValueError:
                raise AdapterConfigError(
                    f"task_type {self.task_type!r} is not one of {[t.value for t in TaskType]}; "
                    "fix the config's `task_type` (or set it to null)."
                ) from None
        if self.base_model_name_or_path == "":
            self.base_model_name_or_path = None
        self._check_values()

    def _check_values(self) -> None:
        rules: dict[str, Number] = {}
        for cls in reversed(type(self).__mro__):
            rules.update(vars(cls).get("NUMBERS", {}))
        check_numbers(self, rules)
        check_bools(self, [f.name for f in dataclasses.fields(self) if f.type == "bool"])
        for name in _NAME_FIELDS:
            if hasattr(self, name):
                check_names(name, getattr(self, name))
        if hasattr(self, "modules_to_save"):
            check_names("modules_to_save", self.modules_to_save, regex_ok=False)

    # -- identity ---------------------------------------------------------------------------------
    @property
    def is_prompt_learning(self) -> bool:
        """True for prompt tuning, P-tuning and prefix tuning (virtual tokens, no injected layers)."""
        return type(self).PROMPT_LEARNING

    # -- (de)serialisation -----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict; sets become sorted lists, enums their values."""

        def plain(v: Any) -> Any:
            if isinstance(v, enum.Enum):
                return v.value
            if isinstance(v, (set, frozenset)):
                return sorted(plain(x) for x in v)
            if isinstance(v, (list, tuple)):
                return [plain(x) for x in v]
            if isinstance(v, dict):
                return {k: plain(x) for k, x in v.items()}
            return v

        return {f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def save_pretrained(self, save_directory: str | os.PathLike[str]) -> None:
        """Write `adapter_config.json` as PEFT does: sorted keys, indent 2, `inference_mode` true."""
        os.makedirs(save_directory, exist_ok=True)
        data = self.to_dict()
        data["inference_mode"] = True
        data["peft_version"] = data.get("peft_version") or PEFT_FORMAT_VERSION
        with open(os.path.join(save_directory, CONFIG_NAME), "w", encoding="utf-8") as fh:
            fh.write(json.dumps(data, indent=2, sort_keys=True))

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "config") -> AdapterConfig:
        """Build the config class named by `data["peft_type"]` (or `cls` itself if it is concrete).

        Unknown keys are dropped with one warning (configs from newer PEFT versions stay loadable);
        an unknown `peft_type` or a missing required key raises `AdapterConfigError`.
        """
        if not isinstance(data, dict):
            raise AdapterConfigError(f"{source}: expected a JSON object, got {type(data).__name__}.")
        check_depth(data, source=source)
        data = dict(data)
        data.pop("runtime_config", None)
        peft_type = data.get("peft_type")
        target = cls
        if peft_type is None and getattr(cls, "PEFT_TYPE", None) is None:
            raise AdapterConfigError(
                f'{source}: missing required key \'peft_type\'; add e.g. "peft_type": "LORA".'
            )
        if peft_type is not None:
            peft_type = _enum_value(peft_type)
            if not isinstance(peft_type, str):
                raise AdapterConfigError(
                    f'{source}: peft_type must be a string such as "LORA", got {peft_type!r}.'
                )
            target = get_method(peft_type, source=source).config_cls
            if getattr(cls, "PEFT_TYPE", None) is not None and cls is not target:
                raise AdapterConfigError(
                    f"{source}: peft_type {peft_type!r} cannot be read as {cls.__name__}; "
                    "use AdapterConfig.from_pretrained to read any adapter."
                )
        missing = [k for k in target.REQUIRED_KEYS if k not in data and k != "peft_type"]
        if missing:
            raise AdapterConfigError(
                f"{source}: missing required key(s) {missing} for {target.__name__}; "
                "the file is truncated or not a PEFT adapter config."
            )
        names = {f.name for f in dataclasses.fields(target)}
        unknown = sorted(k for k in data if k not in names)
        if unknown:
            warnings.warn(
                f"{source}: ignoring keys unknown to Swapyard's {target.__name__} (written by a newer PEFT?): "
                f"{unknown}",
                stacklevel=2,
            )
        kwargs = {k: v for k, v in data.items() if k in names}
        try:
            return target(**kwargs)
        except AdapterConfigError:
            raise
        except (TypeError, ValueError) as exc:
            raise AdapterConfigError(f"{source}: invalid value: {exc}") from exc

    @classmethod
    def from_json_file(cls, path: str | os.PathLike[str]) -> AdapterConfig:
        """Read one `adapter_config.json` file."""
        return cls.from_dict(read_json(path), source=str(path))

    @classmethod
    def from_pretrained(
        cls,
        path_or_hub_id: str | os.PathLike[str],
        *,
        subfolder: str | None = None,
        revision: str | None = None,
        cache_dir: str | None = None,
        token: str | bool | None = None,
        **overrides: Any,
    ) -> AdapterConfig:
        """Read `adapter_config.json` from a local directory or a Hub repo (see `hub.resolve_file`).

        Keyword `overrides` set fields the file does not carry; values in the file win, as in PEFT.
        """
        from .hub import resolve_file

        path = resolve_file(
            str(path_or_hub_id),
            CONFIG_NAME,
            subfolder=subfolder,
            revision=revision,
            cache_dir=cache_dir,
            token=token,
        )
        assert path is not None  # resolve_file raises rather than return None unless missing_ok
        data = read_json(path)
        merged = {**overrides, **data} if isinstance(data, dict) else data
        return cls.from_dict(merged, source=str(path))

    def copy(self, **changes: Any) -> AdapterConfig:
        return dataclasses.replace(self, **changes)


def parse_json(text: str | bytes, *, source: str) -> Any:
    """A JSON document, or `AdapterConfigError`: never a `RecursionError` from hostile nesting.

    Like PEFT (which reads configs with `json.load`), the NaN/Infinity literals parse; every numeric field
    is then checked by its config class, which names the field."""
    try:
        return json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdapterConfigError(
            f"{source}: not valid UTF-8 JSON ({exc}); re-save the adapter with save_pretrained."
        ) from exc
    except RecursionError:
        raise AdapterConfigError(
            f"{source}: the JSON nests too deeply to be an adapter config (a flat object is expected)."
        ) from None


def read_json(path: str | os.PathLike[str]) -> Any:
    with open(path, "rb") as fh:
        return parse_json(fh.read(), source=str(path))
