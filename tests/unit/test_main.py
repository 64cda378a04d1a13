"""app.main: importing it does nothing; `app` and `create_app()` read the configuration when asked."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.conftest import ROOT


def _python(script: str, cwd: Path, **variables: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CONFIG_FILE": str(ROOT / "config.yml"), **variables}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


def test_importing_app_main_reads_no_configuration_and_touches_no_logging(tmp_path: Path) -> None:
    # An invalid configuration: anything that read it at import would end the process.
    result = _python(
        """
        import logging, sys, warnings
        handlers, level, showwarning = list(logging.root.handlers), logging.root.level, warnings.showwarning
        import app.main
        assert "app" not in vars(app.main)
        assert "app" in dir(app.main)  # for tools that look before they get
        assert logging.root.handlers == handlers and logging.root.level == level
        assert warnings.showwarning is showwarning and sys.excepthook is sys.__excepthook__
        assert "torch" not in sys.modules and "transformers" not in sys.modules
        """,
        tmp_path,
        MODEL__DTYPE="float8",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and result.stderr == ""


def test_app_is_built_once_on_first_use_with_json_logging(tmp_path: Path) -> None:
    result = _python(
        """
        import logging
        import app.main
        from app.core.logging import JSONFormatter
        from fastapi import FastAPI
        served = app.main.app
        assert isinstance(served, FastAPI) and app.main.app is served
        assert served.state.settings.model.name == "scripted-model"
        [handler] = logging.root.handlers
        assert isinstance(handler.formatter, JSONFormatter)
        """,
        tmp_path,
        MODEL__NAME="scripted-model",
    )
    assert result.returncode == 0, result.stderr


def test_create_app_without_settings_reads_them_as_a_factory_would(tmp_path: Path) -> None:
    result = _python(
        """
        from app.main import create_app
        assert create_app().state.settings.engine.max_queue == 7
        """,
        tmp_path,
        ENGINE__MAX_QUEUE="7",
    )
    assert result.returncode == 0, result.stderr


def test_a_bad_configuration_ends_the_process_with_one_line_when_app_is_asked_for(tmp_path: Path) -> None:
    for script in ("import app.main; app.main.app", "from app.main import create_app; create_app()"):
        result = _python(script, tmp_path, MODEL__DTYPE="float8")
        assert result.returncode == 2, result.stderr
        assert result.stdout == ""
        [line] = result.stderr.splitlines()
        assert line.startswith("error: invalid configuration: model.dtype")
