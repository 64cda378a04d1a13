"""`python -m app`: load settings, configure logging, serve with uvicorn; exit non-zero on failure."""

from __future__ import annotations

import sys

import uvicorn

from app.core.config import ConfigError
from app.main import config_failed, create_app, serving_settings


def main() -> int:
    settings = serving_settings()
    fatal: list[str] = []
    server: uvicorn.Server | None = None

    def on_fatal(message: str) -> None:
        fatal.append(message)
        if server is not None:
            server.should_exit = True

    try:
        app = create_app(settings, on_fatal=on_fatal)
    except ConfigError as exc:  # a broken prompt template
        config_failed(exc)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=settings.app.host,
            port=settings.app.port,
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=int(settings.engine.shutdown_grace_s) or None,
            server_header=False,
        )
    )
    server.run()
    return 1 if fatal else 0


if __name__ == "__main__":
    sys.exit(main())
