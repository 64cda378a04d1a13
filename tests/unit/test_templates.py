"""Prompt templates: the shipped files load, variables are checked and stay data, escapes are refused at load."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.core.config import ConfigError
from app.core.errors import RequestValidationFailed, TemplateNotFound
from app.engine.types import ChatMessage
from app.services.templates import TemplateRegistry, TemplateRenderer
from tests.conftest import ROOT

SHIPPED = TemplateRegistry.load(ROOT / "prompts" / "templates")


def keep(text: str, param: str) -> str:
    return text


def write(directory: Path, name: str, body: str) -> Path:
    path = directory / name
    path.write_text(body, encoding="utf-8")
    return path


def simple(template: str, variables: str = "  - {name: text}\n") -> str:
    return f"id: t\nversion: '1'\ntemplate: {template!r}\nvariables:\n{variables}"


def test_the_shipped_templates_load_and_render() -> None:
    assert {"summarize", "classify", "extract_json"} <= {t.spec.id for t in SHIPPED}
    rendered = SHIPPED.get("summarize").render({"text": "The cat sat."}, keep)
    assert "The cat sat." in rendered.text and "at most 3 sentences" in rendered.text
    assert rendered.system
    assert (
        "positive, negative" in SHIPPED.get("classify").render({"text": "x", "labels": "positive, negative"}, keep).text
    )


def test_variables_are_data_never_template_source() -> None:
    text = SHIPPED.get("summarize").render({"text": "{{ 7*7 }} {{ ''.__class__.__mro__ }}"}, keep).text
    assert "{{ 7*7 }} {{ ''.__class__.__mro__ }}" in text and "49" not in text


@pytest.mark.parametrize(
    ("values", "param"),
    [
        ({}, "variables.text"),
        ({"text": "x", "colour": "red"}, "variables.colour"),
        ({"text": "x" * 20_001}, "variables.text"),
        ({"text": 5}, "variables.text"),
        ({"text": "x", "sentences": True}, "variables.sentences"),
        ({"text": "x", "sentences": "3"}, "variables.sentences"),
    ],
)
def test_a_missing_unknown_overlong_or_mistyped_variable_names_itself(values: dict[str, object], param: str) -> None:
    with pytest.raises(RequestValidationFailed) as caught:
        SHIPPED.get("summarize").render(values, keep)
    assert caught.value.param == param


def test_string_variables_pass_through_the_redactor_with_their_name() -> None:
    seen: list[str] = []

    def redact(text: str, param: str) -> str:
        seen.append(param)
        return text.replace("a@b.example", "[EMAIL]")

    rendered = SHIPPED.get("summarize").render({"text": "mail a@b.example"}, redact)
    assert "[EMAIL]" in rendered.text and "a@b.example" not in rendered.text
    assert seen == ["variables.text"]


def test_an_unknown_template_is_not_found() -> None:
    with pytest.raises(TemplateNotFound) as caught:
        SHIPPED.get("nope")
    assert caught.value.code == "template_not_found"


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ text.__class__ }}",
        "{{ text['__class__'] }}",
        "{{ lipsum }}",
        "{{ undeclared }}",
        "{{ (text|attr('__cl' ~ 'ass__')) }}",
        "{{ namespace }}",
        "{% for x in range(10) %}{% endfor %}",
    ],
)
def test_a_template_that_reaches_beyond_its_variables_stops_loading(tmp_path: Path, source: str) -> None:
    path = write(tmp_path, "bad.yml", simple(source))
    with pytest.raises(ConfigError) as caught:
        TemplateRegistry.load(tmp_path)
    message = str(caught.value)
    assert str(path) in message and "\n" not in message


@pytest.mark.parametrize(
    "body",
    [
        "id: [unclosed",
        "just text",
        simple("{{ text"),
        simple("{{ text }}", "  - {name: text, type: list}\n"),
        "version: '1'\ntemplate: x\n",
        simple("{{ text }}") + "surprise: 1\n",
    ],
)
def test_a_broken_file_stops_loading_with_one_line_naming_it(tmp_path: Path, body: str) -> None:
    path = write(tmp_path, "broken.yml", body)
    with pytest.raises(ConfigError) as caught:
        TemplateRegistry.load(tmp_path)
    assert str(caught.value).startswith(f"template {path}: ") and "\n" not in str(caught.value)


def test_a_missing_directory_stops_loading_unless_it_may_be_absent(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^templates\.dir: "):
        TemplateRegistry.load(tmp_path / "nowhere")
    assert len(TemplateRegistry.load(tmp_path / "nowhere", must_exist=False)) == 0


def test_two_files_with_one_id_stop_loading(tmp_path: Path) -> None:
    write(tmp_path, "a.yml", simple("{{ text }}"))
    write(tmp_path, "b.yml", simple("{{ text }}"))
    with pytest.raises(ConfigError, match="already used"):
        TemplateRegistry.load(tmp_path)


def test_chat_rendering_replaces_the_last_user_message_and_adds_the_system_once() -> None:
    renderer = TemplateRenderer(SHIPPED, keep)
    history = [ChatMessage("user", "earlier"), ChatMessage("assistant", "ok"), ChatMessage("user", "")]
    out = renderer.chat("summarize", {"text": "T"}, history)
    assert [m.role for m in out] == ["system", "user", "assistant", "user"]
    assert "T" in out[-1].content and out[1].content == "earlier"
    with_system = renderer.chat("summarize", {"text": "T"}, [ChatMessage("system", "mine")])
    assert with_system[0] == ChatMessage("system", "mine")
    assert [m.role for m in with_system] == ["system", "user"]
    assert renderer.chat(None, {}, history) == history


def test_template_parameters_are_defaults_under_the_request() -> None:
    from app.core.config import ModelSettings

    base = ModelSettings()
    renderer = TemplateRenderer(SHIPPED, keep)
    assert renderer.sampling_defaults(None, base) is base
    defaults = renderer.sampling_defaults("summarize", base)
    assert defaults.temperature == 0.0 and defaults.default_max_tokens == 200


def test_a_broken_template_stops_the_server_with_one_line(tmp_path: Path) -> None:
    templates = tmp_path / "templates"
    templates.mkdir()
    path = write(templates, "escape.yml", simple("{{ cycler.__init__.__globals__ }}"))
    env = {
        **os.environ,
        "CONFIG_FILE": str(ROOT / "config.yml"),
        "PYTHONPATH": str(ROOT),
        "TEMPLATES__DIR": str(templates),
    }
    for command in (["-m", "app"], ["-c", "from app.main import create_app; create_app()"]):
        result = subprocess.run(
            [sys.executable, *command], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 2, result.stderr
        [line] = result.stderr.splitlines()
        assert line.startswith(f"error: template {path}: ")
