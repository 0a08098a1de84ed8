"""The workload file format: JSON Lines, one request per line (pydantic-validated).

A workload is what a benchmark replays: when each request arrives and what it asks for.
Write one by hand or from a script; every field but `arrival_s` and `input_tokens` (or
`prompt`) is optional::

    {"arrival_s": 0.0,  "input_tokens": 812, "output_tokens": 64}
    {"arrival_s": 0.25, "input_tokens": 2048, "output_tokens": 16, "prefix_blocks": [7, 8, 9],
     "tenant": "acme", "priority": "high", "slo_class": "interactive",
     "ttft_slo_ms": 200, "tpot_slo_ms": 50}
    {"arrival_s": 0.5,  "prompt": "an explicit prompt, one token per word", "output_tokens": 8}

Fields
- `arrival_s`: seconds from the start of the run (lines may come in any order).
- `input_tokens`: prompt length; the replay builds a prompt of exactly this many tokens
  (the simulator's tokenizer: one token per whitespace-separated word). Ignored with `prompt`.
- `output_tokens`: tokens to generate (`max_tokens`), default 128.
- `prefix_blocks`: ids of shared prompt blocks (Mooncake's `hash_ids`): the prompt starts with
  the text of these blocks, `block_tokens` (512) words each, the same text for the same id in
  every request, so equal leading ids mean a really shared KV prefix.
- `tenant` (becomes the request's `user_id`), `priority` (critical/high/normal/low/background
  or 0-4), `slo_class` (a label reports group by), `ttft_slo_ms`, `tpot_slo_ms`, `deadline_ms`
  (end-to-end), `request_id`.
Blank lines and lines starting with `#` are skipped; an invalid line fails with its number.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from sage_cp_plugin.errors import ConfigurationError
from sage_cp_plugin.types import RequestPriority

BLOCK_TOKENS = 512  # tokens per prefix block (Mooncake's hash_id granularity)


class WorkloadRecord(BaseModel):
    """One request of a workload (see the module docstring for the meaning of each field)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    arrival_s: float = Field(ge=0.0)
    input_tokens: int = Field(default=0, ge=0)
    output_tokens: int = Field(default=128, ge=1)
    prompt: str | None = None
    prefix_blocks: tuple[int, ...] = ()
    tenant: str | None = None
    priority: RequestPriority = RequestPriority.NORMAL
    slo_class: str | None = None
    ttft_slo_ms: float | None = Field(default=None, gt=0)
    tpot_slo_ms: float | None = Field(default=None, gt=0)
    deadline_ms: float | None = Field(default=None, gt=0)
    request_id: str | None = None

    @model_validator(mode="after")
    def _has_prompt(self) -> WorkloadRecord:
        if self.prompt is None and self.input_tokens < 1:
            raise ValueError("a record needs input_tokens >= 1 or an explicit prompt")
        return self

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt.split()) if self.prompt is not None else self.input_tokens


def parse_workload(lines: Iterable[str], source: str = "<workload>") -> list[WorkloadRecord]:
    """Records of a JSONL text, sorted by arrival (stable for equal times)."""
    out: list[WorkloadRecord] = []
    for n, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            out.append(WorkloadRecord.model_validate(json.loads(line)))
        except ValidationError as exc:
            # One line naming the field: pydantic's own message spans several.
            e = exc.errors()[0]
            field = ".".join(str(p) for p in e["loc"]) or "<record>"
            raise ConfigurationError(
                f"{source}:{n}: invalid workload record: field {field!r}: {e['msg']}"
                + (f" (got {e['input']!r:.60})" if e["loc"] else "")
            ) from None
        except ValueError as exc:
            raise ConfigurationError(f"{source}:{n}: invalid workload record: {exc}") from None
    out.sort(key=lambda r: r.arrival_s)
    return out


def load_workload(path: str | Path) -> list[WorkloadRecord]:
    p = Path(path)
    try:
        with p.open(encoding="utf-8") as f:
            return parse_workload(f, str(p))
    except FileNotFoundError:
        raise ConfigurationError(f"workload file {str(p)!r} does not exist") from None


def save_workload(path: str | Path, records: Iterable[WorkloadRecord]) -> None:
    """Write records as JSONL, leaving out fields at their defaults (files stay readable)."""
    with Path(path).open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r.model_dump(mode="json", exclude_defaults=True)) + "\n")
