"""Validation at the boundary: bad input is rejected with the field and the value named."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from sage_cp_plugin import (
    ExecutionInstance,
    ExecutionInstanceType,
    ParallelismType,
    PDSeparationConfig,
    RequestKind,
    RequestMetadata,
    RequestPriority,
    RequestStatus,
)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_tokens", -5),
        ("max_tokens", 0),
        ("slo_deadline_ms", 0),
        ("slo_deadline_ms", -1.5),
        ("cost_budget", -0.01),
        ("ttft_slo_ms", -3),
        ("priority", "URGENT"),
        ("top_p", 1.5),
    ],
)
def test_invalid_request_fields_name_field_and_value(field: str, value: object) -> None:
    with pytest.raises(ValidationError) as err:
        RequestMetadata(prompt="hi", **{field: value})  # type: ignore[arg-type]
    text = str(err.value)
    assert field in text
    assert repr(value) in text or str(value) in text


def test_unknown_field_is_rejected_not_ignored() -> None:
    with pytest.raises(ValidationError, match="max_token"):
        RequestMetadata(prompt="hi", max_token=10)  # type: ignore[call-arg]


def test_missing_request_id_is_generated_and_unique() -> None:
    ids = {RequestMetadata(prompt="x").request_id for _ in range(1000)}
    assert len(ids) == 1000
    assert RequestMetadata(prompt="x", request_id=None).request_id  # type: ignore[arg-type]


@pytest.mark.parametrize("port", [0, -1, 65536, 70000])
def test_invalid_port_rejected(port: int) -> None:
    with pytest.raises(ValidationError, match="port"):
        ExecutionInstance(instance_id="a", port=port)


def test_enums_accept_member_value_and_name() -> None:
    assert ExecutionInstance(instance_id="a", instance_type="prefilling").instance_type is (
        ExecutionInstanceType.PREFILLING
    )
    assert ExecutionInstance(instance_id="a", instance_type="DECODING").instance_type is (
        ExecutionInstanceType.DECODING
    )
    assert RequestMetadata(prompt="x", priority="HIGH").priority is RequestPriority.HIGH
    assert RequestMetadata(prompt="x", priority="low").priority is RequestPriority.LOW
    assert RequestMetadata(prompt="x", priority=0).priority is RequestPriority.CRITICAL
    assert RequestMetadata(prompt="x", parallelism_hint="hybrid").parallelism_hint is (
        ParallelismType.HYBRID
    )
    assert RequestStatus.COMPLETED == "completed"
    with pytest.raises(ValidationError, match="instance_type"):
        ExecutionInstance(instance_id="a", instance_type="gpu-box")


def test_request_kind_is_inferred() -> None:
    assert RequestMetadata(prompt="x").kind is RequestKind.COMPLETION
    assert RequestMetadata(messages=[{"role": "user", "content": "x"}]).kind is RequestKind.CHAT
    assert RequestMetadata(input=["a", "b"]).kind is RequestKind.EMBEDDING
    with pytest.raises(ValidationError, match="role"):
        RequestMetadata(messages=[{"content": "no role"}])
    with pytest.raises(ValidationError, match="input"):
        RequestMetadata(kind="embedding")


def test_pd_config_validates_choices() -> None:
    with pytest.raises(ValidationError, match="routing_policy"):
        PDSeparationConfig(routing_policy="magic")
    with pytest.raises(ValidationError, match="prefilling_threshold_input_tokens"):
        PDSeparationConfig(prefilling_threshold_input_tokens=0)


def test_served_models_default_to_model_name() -> None:
    inst = ExecutionInstance(instance_id="a", model_name="llama")
    assert inst.served_models == ["llama"]
    assert inst.serves("llama") and inst.serves(None) and not inst.serves("other")
    assert inst.base_url == "http://localhost:8000"
