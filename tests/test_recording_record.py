"""The request log's line format: round trip, defaults, tolerance of newer fields."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from sage_cp_plugin.recording import RequestLogRecord
from sage_cp_plugin.types import RequestPriority, RequestStatus


def test_round_trip_keeps_every_field() -> None:
    rec = RequestLogRecord(
        request_id="r1",
        source="gateway",
        arrival_s=1.5,
        model="m",
        priority=RequestPriority.HIGH,
        ttft_slo_ms=200.0,
        input_tokens=700,
        output_tokens=12,
        prefix_hashes=[3, 9],
        decision={"instance_id": "i0", "policy": "fifo", "router": "round_robin"},
        timings={"ttft_ms": 40.0, "e2e_ms": 90.0},
        state=RequestStatus.COMPLETED,
    )
    back = RequestLogRecord.model_validate_json(rec.model_dump_json())
    assert back == rec
    assert back.decision.instance_id == "i0"
    assert back.priority is RequestPriority.HIGH


def test_newer_fields_are_ignored_and_bad_values_refused() -> None:
    line = json.dumps({"request_id": "r", "arrival_s": 0, "field_from_the_future": 1})
    assert RequestLogRecord.model_validate_json(line).request_id == "r"
    with pytest.raises(ValidationError, match="arrival_s"):
        RequestLogRecord.model_validate({"request_id": "r", "arrival_s": -1})
