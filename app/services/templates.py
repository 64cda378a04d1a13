"""Prompt templates: YAML files loaded and checked once at start-up, rendered per request in a Jinja2 sandbox."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from jinja2 import StrictUndefined, TemplateError, meta, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from app.core.config import ConfigError, ModelSettings
from app.core.errors import RequestValidationFailed, TemplateNotFound
from app.engine.types import ChatMessage

VariableType = Literal["string", "integer", "number", "boolean"]
VariableValue = str | int | float | bool
Redact = Callable[[str, str], str]
"""(text, param) -> the text the model may see; PIIGuard.check_input."""

_PYTHON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
}
_NO_NUL = r"^[^\u0000]*$"
"""What a text value may hold (no NUL), as the API's text fields say."""
_SAMPLES: dict[str, VariableValue] = {"string": "sample", "integer": 1, "number": 1.5, "boolean": True}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TemplateVariable(_Strict):
    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
    type: VariableType = "string"
    required: bool | None = None
    """Defaults to true when there is no default."""
    default: VariableValue | None = None
    max_length: Annotated[int, Field(ge=1)] | None = None
    """Most characters of a string value."""

    @property
    def is_required(self) -> bool:
        return self.required if self.required is not None else self.default is None

    @model_validator(mode="after")
    def _default_fits(self) -> TemplateVariable:
        if self.default is not None and not _has_type(self.default, self.type):
            raise ValueError(f"default of {self.name} is not a {self.type}")
        return self


class TemplateParameters(_Strict):
    """Sampling defaults of a template; a request's own values win."""

    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    top_k: Annotated[int, Field(ge=0)] | None = None
    repetition_penalty: Annotated[float, Field(gt=0.0, le=10.0)] | None = None


class TemplateFile(_Strict):
    id: str = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")
    version: str = Field(min_length=1, max_length=64)
    description: str = ""
    system: str | None = None
    template: str = Field(min_length=1)
    variables: list[TemplateVariable] = []
    parameters: TemplateParameters = TemplateParameters()


def _has_type(value: object, kind: str) -> bool:
    # bool is an int to Python, never to a template's declaration.
    return isinstance(value, _PYTHON_TYPES[kind]) and (kind == "boolean" or not isinstance(value, bool))


@dataclass(frozen=True)
class Rendered:
    text: str
    system: str | None
    """The template's own system message, if it has one."""


class PromptTemplate:
    """One checked template, its Jinja source compiled once."""

    def __init__(self, spec: TemplateFile, env: ImmutableSandboxedEnvironment) -> None:
        self.spec = spec
        self._body = env.from_string(spec.template)
        self._variables = {v.name: v for v in spec.variables}

    @property
    def variables(self) -> list[TemplateVariable]:
        return list(self.spec.variables)

    def variables_schema(self) -> dict[str, Any]:
        """The JSON Schema of `variables` that `bind` enforces, for the API's document."""
        properties: dict[str, Any] = {}
        for declared in self.spec.variables:
            kind: dict[str, Any] = {"type": declared.type}
            if declared.type == "string":
                kind["pattern"] = _NO_NUL
                if declared.max_length is not None:
                    kind["maxLength"] = declared.max_length
            properties[declared.name] = kind
        required = [v.name for v in self.spec.variables if v.is_required and v.default is None]
        return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}

    def bind(self, values: Mapping[str, object], redact: Redact) -> dict[str, VariableValue]:
        """The values the body sees: each checked against its declaration, strings PII-checked."""
        for name in values:
            if name not in self._variables:
                raise RequestValidationFailed(
                    f"variables.{name}: unknown variable of template {self.spec.id}", param=f"variables.{name}"
                )
        bound: dict[str, VariableValue] = {}
        for name, declared in self._variables.items():
            param = f"variables.{name}"
            value = values.get(name, declared.default)
            if value is None:
                if declared.is_required:
                    raise RequestValidationFailed(f"{param}: required by template {self.spec.id}", param=param)
                continue
            if not _has_type(value, declared.type):
                raise RequestValidationFailed(f"{param}: must be a {declared.type}", param=param)
            if isinstance(value, str):
                if declared.max_length is not None and len(value) > declared.max_length:
                    raise RequestValidationFailed(f"{param}: longer than {declared.max_length} characters", param=param)
                value = redact(value, param)
            bound[name] = value  # type: ignore[assignment]  # checked against the declared type above
        return bound

    def render(self, values: Mapping[str, object], redact: Redact) -> Rendered:
        # Values are passed as data: Jinja prints them, it never parses them as template source.
        return Rendered(text=self._body.render(self.bind(values, redact)), system=self.spec.system)

    def sampling_defaults(self, base: ModelSettings) -> ModelSettings:
        """The model's defaults with this template's parameters over them."""
        p = self.spec.parameters
        update = {
            "default_max_tokens": p.max_tokens,
            "temperature": p.temperature,
            "top_p": p.top_p,
            "top_k": p.top_k,
            "repetition_penalty": p.repetition_penalty,
        }
        return base.model_copy(update={key: value for key, value in update.items() if value is not None})


class TemplateRegistry:
    """The templates of one directory, by id."""

    def __init__(self, templates: Iterable[PromptTemplate] = ()) -> None:
        self._templates = {t.spec.id: t for t in templates}

    @classmethod
    def load(cls, directory: Path, must_exist: bool = True) -> TemplateRegistry:
        """Every `*.yml` of `directory`, or ConfigError naming the file (or the missing directory)."""
        if must_exist and not directory.is_dir():
            raise ConfigError(f"templates.dir: {directory} is not a directory")
        env = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False)
        # A template sees its declared variables and nothing else (no cycler, lipsum, range...).
        env.globals.clear()
        templates: dict[str, PromptTemplate] = {}
        files = sorted(directory.glob("*.yml")) if directory.is_dir() else []
        for path in files:
            try:
                template = _load_one(path, env)
            except (OSError, ValueError, TemplateError, yaml.YAMLError) as exc:
                raise ConfigError(f"template {path}: {_one_line(exc)}") from None
            if template.spec.id in templates:
                raise ConfigError(f"template {path}: id {template.spec.id!r} is already used by another file")
            templates[template.spec.id] = template
        return cls(templates.values())

    def __iter__(self) -> Iterator[PromptTemplate]:
        return iter(self._templates.values())

    def __len__(self) -> int:
        return len(self._templates)

    def get(self, template_id: str) -> PromptTemplate:
        template = self._templates.get(template_id)
        if template is None:
            raise TemplateNotFound(f"template '{template_id}' does not exist", param="template_id")
        return template


def _load_one(path: Path, env: ImmutableSandboxedEnvironment) -> PromptTemplate:
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(raw, dict):
        raise ValueError("not a YAML mapping")
    try:
        spec = TemplateFile.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ValueError(f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from None
    for source in (spec.template, spec.system or ""):
        _check_source(source, env, {v.name for v in spec.variables})
    template = PromptTemplate(spec, env)
    # A trial render with sample values catches what only rendering finds (a filter misused).
    samples = {v.name: v.default if v.default is not None else _SAMPLES[v.type] for v in spec.variables}
    template.render(samples, lambda text, _param: text)
    return template


def _check_source(source: str, env: ImmutableSandboxedEnvironment, declared: set[str]) -> None:
    """Refuse what a prompt never needs and a sandbox escape always does: names the file does not
    declare (Jinja's globals such as `cycler` are gone) and any attribute or key starting with `_`."""
    ast = env.parse(source)
    undeclared = meta.find_undeclared_variables(ast) - declared
    if undeclared:
        raise ValueError(f"uses undeclared name(s): {', '.join(sorted(undeclared))}")
    for node in ast.find_all((nodes.Getattr, nodes.Getitem)):
        attr = node.attr if isinstance(node, nodes.Getattr) else getattr(getattr(node, "arg", None), "value", None)
        if isinstance(attr, str) and attr.startswith("_"):
            raise ValueError(f"refers to the private attribute {attr!r}")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


class TemplateRenderer:
    """What a request's `template_id` + `variables` become: a prompt, or the chat's last user message."""

    def __init__(self, registry: TemplateRegistry, redact: Redact) -> None:
        self._registry = registry
        self._redact = redact

    def sampling_defaults(self, template_id: str | None, base: ModelSettings) -> ModelSettings:
        return base if template_id is None else self._registry.get(template_id).sampling_defaults(base)

    def prompt(self, template_id: str, variables: Mapping[str, object]) -> str:
        """A raw prompt: the rendered body (a raw prompt has no system message)."""
        return self._registry.get(template_id).render(variables, self._redact).text

    def chat(
        self, template_id: str | None, variables: Mapping[str, object], messages: Sequence[ChatMessage]
    ) -> list[ChatMessage]:
        """The rendered text as the last user message (its content replaced, or a new one after
        the others), and the template's system message first when the request has none."""
        if template_id is None:
            return list(messages)
        rendered = self._registry.get(template_id).render(variables, self._redact)
        turn = ChatMessage("user", rendered.text)
        out = [*messages[:-1], turn] if messages and messages[-1].role == "user" else [*messages, turn]
        if rendered.system is not None and not any(m.role == "system" for m in out):
            out.insert(0, ChatMessage("system", rendered.system))
        return out
