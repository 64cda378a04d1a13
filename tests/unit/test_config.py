"""Configuration: config.yml < .env < environment, CONFIG_FILE, one-line errors, secrets."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.core.config import ConfigError, ModelSettings, is_loopback, load_settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if "__" in key or key in {"CONFIG_FILE", "HUGGINGFACE_TOKEN", "HF_TOKEN"}:
            monkeypatch.delenv(key)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_yaml_then_dotenv_then_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    yaml_file = write(tmp_path / "c.yml", "model:\n  temperature: 0.1\n  top_k: 7\nengine:\n  max_queue: 3\n")
    env_file = tmp_path / ".env"

    settings = load_settings(config_file=yaml_file, env_file=env_file)
    assert (settings.model.temperature, settings.model.top_k, settings.engine.max_queue) == (0.1, 7, 3)

    write(env_file, "MODEL__TEMPERATURE=0.2\n")
    settings = load_settings(config_file=yaml_file, env_file=env_file)
    assert (settings.model.temperature, settings.model.top_k) == (0.2, 7)

    monkeypatch.setenv("MODEL__TEMPERATURE", "0.3")
    settings = load_settings(config_file=yaml_file, env_file=env_file)
    assert (settings.model.temperature, settings.model.top_k, settings.engine.max_queue) == (0.3, 7, 3)


def test_config_file_chosen_by_environment_or_dotenv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    other = write(tmp_path / "other.yml", "model:\n  name: some/model\n")
    env_file = write(tmp_path / ".env", f"CONFIG_FILE={other}\n")
    assert load_settings(env_file=env_file).model.name == "some/model"

    third = write(tmp_path / "third.yml", "model:\n  name: third/model\n")
    monkeypatch.setenv("CONFIG_FILE", str(third))
    assert load_settings(env_file=env_file).model.name == "third/model"


def test_missing_config_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings(config_file=tmp_path / "nope.yml", env_file=None)


@pytest.mark.parametrize(
    ("yaml_text", "key"),
    [
        ("model:\n  dtype: float8\n", "model.dtype"),
        ("model:\n  device: tpu\n", "model.device"),
        ("engine:\n  max_queue: -1\n", "engine.max_queue"),
        ("app:\n  port: 99999\n", "app.port"),
        ("model:\n  temprature: 0.5\n", "model.temprature"),
        ("security:\n  api_keys: [plain-secret-key]\n  admin_keys: [key-2]\n", "security"),
        ("security:\n  api_keys: [{name: a, key: a-secret-key, tokens_per_day: -1}]\n", "security.api_keys.0"),
    ],
)
def test_invalid_value_names_the_key(tmp_path: Path, yaml_text: str, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(config_file=write(tmp_path / "c.yml", yaml_text), env_file=None)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("invalid configuration: " + key)


@pytest.mark.parametrize(
    "yaml_text",
    [
        "model:\n  quantization: bf16\n  dtype: float32\n",
        "model:\n  quantization: int8\n  dtype: bfloat16\n",
        "model:\n  quantization: fp16\n  dtype: float16\n",
        "model:\n  quantization: int8\n  device: cuda\n",
        "model:\n  quantization: fp16\n  device_map: auto\n",
        "model:\n  quantization: int4\n",
    ],
)
def test_contradictory_quantization_is_refused(tmp_path: Path, yaml_text: str) -> None:
    with pytest.raises(ConfigError, match=r"^invalid configuration: model"):
        load_settings(config_file=write(tmp_path / "c.yml", yaml_text), env_file=None)


@pytest.mark.parametrize(
    ("quantization", "dtype", "device"),
    [("none", "float16", "cuda"), ("bf16", "bfloat16", "auto"), ("bf16", "auto", "cuda"), ("int8", "float32", "cpu")],
)
def test_quantization_that_fits_dtype_and_device_is_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, quantization: str, dtype: str, device: str
) -> None:
    monkeypatch.setenv("MODEL__QUANTIZATION", quantization)
    yaml_text = f"model:\n  dtype: {dtype}\n  device: {device}\n"
    settings = load_settings(config_file=write(tmp_path / "c.yml", yaml_text), env_file=None)
    assert (settings.model.quantization, settings.model.dtype) == (quantization, dtype)
    assert (
        load_settings(config_file=write(tmp_path / "d.yml", "{}\n"), env_file=None).model.quantization == quantization
    )


def test_nested_json_values_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODEL__DEVICE_MAP", '{"": "cpu"}')
    settings = load_settings(config_file=write(tmp_path / "c.yml", "{}\n"), env_file=None)
    assert settings.model.device_map == {"": "cpu"}


@pytest.mark.parametrize("variable", ["HUGGINGFACE_TOKEN", "HF_TOKEN"])
def test_token_is_read_and_never_shown(variable: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(variable, "hf_supersecret")
    settings = load_settings(config_file=write(tmp_path / "c.yml", "{}\n"), env_file=None)
    assert settings.huggingface_token is not None
    assert settings.huggingface_token.get_secret_value() == "hf_supersecret"
    assert "hf_supersecret" not in repr(settings)
    assert "hf_supersecret" not in settings.model_dump_json()


def test_repository_config_and_env_example_agree() -> None:
    """Every key of .env.example is a real setting, so the documented keys cannot rot."""
    settings = load_settings(config_file=ROOT / "config.yml", env_file=None)
    lines = (ROOT / ".env.example").read_text(encoding="utf-8").splitlines()
    keys = [line.lstrip("# ").split("=", 1)[0] for line in lines if "=" in line and "__" in line.split("=", 1)[0]]
    assert keys, ".env.example lists no keys"
    for key in keys:
        node: object = settings.model_dump()
        for part in key.lower().split("__"):
            assert isinstance(node, dict) and part in node, key
            node = node[part]


def test_server_refuses_invalid_config_with_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "MODEL__DTYPE": "float8", "CONFIG_FILE": str(ROOT / "config.yml"), "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "app"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "model.dtype" in lines[0]
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("localhost", True),
        ("::ffff:127.0.0.1", True),  # an IPv4 peer as a dual-stack socket reports it
        ("0.0.0.0", False), ("::", False), ("192.0.2.7", False), ("::ffff:192.0.2.7", False), ("example.org", False),
    ],
)  # fmt: skip
def test_loopback_addresses(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


@pytest.mark.parametrize(
    ("quantization", "dtype", "requested"),
    [
        ("none", "auto", "auto"),
        ("bf16", "auto", "bfloat16"),
        ("int8", "auto", "float32"),
        ("none", "float16", "float16"),
    ],
)
def test_the_dtype_asked_of_the_loader_follows_the_quantization_where_dtype_is_auto(
    quantization: str, dtype: str, requested: str
) -> None:
    assert ModelSettings.model_validate({"quantization": quantization, "dtype": dtype}).requested_dtype() == requested
