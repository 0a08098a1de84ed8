"""The pipelines under examples/pipelines/ run as written (on fast simulated fleets)."""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "pipelines"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def no_service_threads() -> bool:
    return not [t for t in threading.enumerate() if t.name == "sage-cp-service" and t.is_alive()]


def test_batch_chat(tmp_path: Path) -> None:
    out = tmp_path / "chat.jsonl"
    summary: dict[str, Any] = load("batch_chat").main(["--out", str(out), "--time-scale", "0"])
    assert summary["succeeded"] == 64 and len(out.read_text().splitlines()) == 64
    assert no_service_threads()


def test_batch_embeddings() -> None:
    result = load("batch_embeddings").main(["--time-scale", "0"])
    assert result == {"vectors": 256, "dimension": 384}


def test_streaming_live_source() -> None:
    result = load("streaming_live").main(["--seconds", "0.5", "--time-scale", "0"])
    assert result["sent"] > 5 and result["answered"] == result["sent"]
    assert result["service_threads"] == 0


def test_pd_disaggregated_fleet() -> None:
    result = load("pd_fleet").main(["--time-scale", "0"])
    assert result == {"ok": 12, "total": 12, "instances": ["decode-0"]}


def test_third_party_policy_plugin(example_plugin: str) -> None:
    result = load("policy_plugin").main(["--time-scale", "0"])
    assert result == {"policy": "shortest_prompt_first", "ok": 40, "total": 40}


def test_policy_plugin_missing_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    module = load("policy_plugin")
    monkeypatch.setattr(module, "POLICY", "not_installed_policy")
    with pytest.raises(SystemExit, match="pip install"):
        module.main([])
