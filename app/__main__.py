"""`python -m app`: load settings, configure logging, serve with uvicorn (draining on SIGTERM);
exit non-zero on failure."""

from __future__ import annotations

import sys

import uvicorn

from app.core.config import ConfigError
from app.main import config_failed, create_app, serving_settings
from app.server import DrainingServer, drain_app


def main() -> int:
    settings = serving_settings()
    fatal: list[str] = []
    server: DrainingServer | None = None

    def on_fatal(message: str) -> None:
        fatal.append(message)
        if server is not None:
            server.should_exit = True

    try:
        app = create_app(settings, on_fatal=on_fatal)
    except ConfigError as exc:  # a broken prompt template
        config_failed(exc)
    server = DrainingServer(
        uvicorn.Config(
            app,
            host=settings.app.host,
            port=settings.app.port,
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=int(settings.engine.shutdown_grace_s) or None,
            server_header=False,
        ),
        drain=lambda: drain_app(app),
    )
    server.run()
    return 1 if fatal else 0


if __name__ == "__main__":
    sys.exit(main())
