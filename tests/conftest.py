"""Test settings shared by every test: the integration stack runs on its own ports and home.

The variables are set before any test module imports runlog code, so the SDK, the public
client and the stack fixture all see the same test stack, never a developer's own one.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

TEST_ENV = {
    "RUNLOG_HOME": str(ROOT / ".runlog-test"),
    "RUNLOG_BOOTSTRAP_SERVERS": "127.0.0.1:29092",
    "RUNLOG_DATABASE_URL": "postgresql://runlog@127.0.0.1:25432/runlog",
    "RUNLOG_API_URL": "http://127.0.0.1:28080",
    "RUNLOG_ENTITY": "tester",
}
for _key, _value in TEST_ENV.items():
    os.environ.setdefault(_key, _value)
