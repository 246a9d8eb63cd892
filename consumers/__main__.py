"""``python -m consumers``: run one projection consumer until SIGTERM/SIGINT."""

from __future__ import annotations

from ._service import serve
from .app import Projector


def main() -> None:
    serve("consumer", Projector)


if __name__ == "__main__":
    main()
