"""``python -m api``: serve the HTTP API with uvicorn on RUNLOG_API_URL's host and port."""

from __future__ import annotations

import sys

import uvicorn

from events.settings import apply_home_flag, get_settings, tune_service_gc

from .app import create_app


def main() -> None:
    apply_home_flag(sys.argv[1:])
    settings = get_settings()
    tune_service_gc()
    uvicorn.run(create_app(settings), host=settings.api_host, port=settings.api_port, log_level="info",
                access_log=False, loop="uvloop", http="httptools")


if __name__ == "__main__":
    main()
