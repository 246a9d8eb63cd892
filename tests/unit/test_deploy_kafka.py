"""Pure parts of the local Kafka set-up."""

from __future__ import annotations

import base64
from unittest import mock

from deploy import kafka


def test_cluster_id_never_starts_with_a_dash() -> None:
    # The storage tool's argument parser takes "-..." for an option; the generator must retry.
    ids = iter([uuid_bytes for uuid_bytes in (b"\xf8" + bytes(15), bytes(16))])
    with mock.patch.object(kafka.uuid, "uuid4", side_effect=lambda: mock.Mock(bytes=next(ids))):
        cid = kafka._kafka_cluster_id()
    assert not cid.startswith("-")
    assert len(base64.urlsafe_b64decode(cid + "==")) == 16


def test_cluster_ids_are_16_bytes_urlsafe() -> None:
    for _ in range(200):
        cid = kafka._kafka_cluster_id()
        assert len(cid) == 22 and not cid.startswith("-")
        assert len(base64.urlsafe_b64decode(cid + "==")) == 16
