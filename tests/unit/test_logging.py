"""configure_logging: every logger, Python warning and uncaught exception becomes one JSON line on stdout."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from typing import Any

from tests.conftest import ROOT

# Each script runs in a fresh interpreter: logging, warnings and the exception hooks are
# process-wide, and the test must see them as a server process would.
_BEFORE_OUR_LOGGING = """
    import logging, logging.config, sys, threading, warnings
    import uvicorn.config

    # uvicorn's CLI puts its text handlers on its loggers before it imports the app
    logging.config.dictConfig(uvicorn.config.LOGGING_CONFIG)
    # as transformers does for its own logger: a stderr handler, no propagation
    library = logging.getLogger("transformers")
    library.addHandler(logging.StreamHandler(sys.stderr))
    library.propagate = False

    from app.core.logging import configure_logging
    configure_logging("INFO")
"""


def _run(script: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    code = textwrap.dedent(_BEFORE_OUR_LOGGING) + textwrap.dedent(script)
    return subprocess.run(
        [sys.executable, "-W", "always", "-c", code], env=env, capture_output=True, text=True, timeout=60
    )


def _records(stdout: str) -> list[dict[str, Any]]:
    records = [json.loads(line) for line in stdout.splitlines()]
    assert all(isinstance(record, dict) for record in records)
    return records


def test_library_loggers_warnings_and_uncaught_exceptions_are_json_lines() -> None:
    result = _run("""
        logging.getLogger("uvicorn.error").info("Uvicorn running on http://127.0.0.1:8000")
        logging.getLogger("uvicorn.access").info("GET / 200")
        logging.getLogger("transformers").warning("from the library")
        warnings.warn("past_key_values is deprecated, use cache instead", FutureWarning)
        worker = threading.Thread(target=lambda: 1 / 0, name="loader")
        worker.start()
        worker.join()
        raise RuntimeError("nobody caught this")
    """)
    assert result.returncode == 1
    assert result.stderr == ""
    records = _records(result.stdout)
    by_logger = [(r["logger"], r["level"]) for r in records]
    assert by_logger == [
        ("uvicorn.error", "INFO"),
        ("transformers", "WARNING"),
        ("py.warnings", "WARNING"),
        ("app.process", "CRITICAL"),
        ("app.process", "CRITICAL"),
    ], records
    assert "FutureWarning: past_key_values is deprecated" in records[2]["message"]
    assert records[3]["thread_name"] == "loader" and "ZeroDivisionError" in records[3]["exception"]
    assert "RuntimeError: nobody caught this" in records[4]["exception"]


def test_ctrl_c_ends_the_process_without_a_traceback() -> None:
    result = _run("raise KeyboardInterrupt")
    assert result.returncode == -signal.SIGINT
    assert result.stdout == "" and result.stderr == ""


def test_the_configured_level_applies_to_uvicorn_too() -> None:
    result = _run("""
        configure_logging("WARNING")
        logging.getLogger("uvicorn.error").info("Uvicorn running on http://127.0.0.1:8000")
        logging.getLogger("app.anything").info("not shown either")
        logging.getLogger("uvicorn.error").warning("shown")
    """)
    assert result.returncode == 0, result.stderr
    assert [r["message"] for r in _records(result.stdout)] == ["shown"]
