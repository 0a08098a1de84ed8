"""Workloads from a request log or an OpenAI batch file, for `sage-cp replay`.

- A request log (a folder of ``requests-NNNNNN.jsonl`` or one such file): every completion
  or chat request becomes a `WorkloadRecord` with its arrival, lengths (the tokens it really
  generated when it completed, else its `max_tokens`), salted block hashes as
  `prefix_blocks` (so shared prefixes replay as shared), user, priority, SLOs and its own
  request id; the recorded text when the log has it. Embedding requests are left out (the
  replay drives completions) and counted.
- An OpenAI batch input file (``{"custom_id", "method", "url", "body"}`` lines): prompt
  lengths come from a tokenizer: ``words`` (the simulator's: one token per word),
  ``estimate`` (the coordinator's own estimate, 4 characters per token; the default, stated
  in the output) or a Hugging Face tokenizer name (needs `transformers` installed). Output
  length is the body's `max_tokens`/`max_completion_tokens`, else 128 (stated). A batch file
  has no arrival times: the caller gives it arrivals (`--rate`).
Bad lines fail with one line naming the file, the line and the field.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from sage_cp_plugin.errors import ConfigurationError
from sage_cp_plugin.recording.hashing import block_hashes
from sage_cp_plugin.recording.record import RequestLogRecord
from sage_cp_plugin.recording.writer import log_files
from sage_cp_plugin.types import RequestKind, RequestStatus
from sage_cp_plugin.workloads.format import BLOCK_TOKENS, WorkloadRecord

DEFAULT_OUTPUT_TOKENS = 128  # a batch line without max_tokens: stated in the import summary
BATCH_SALT = b"sage-cp-openai-batch"  # prefix ids only need to be equal within one file


@dataclass
class Imported:
    """Records and what the import had to assume or leave out."""

    records: list[WorkloadRecord]
    timed: bool
    skipped: dict[str, int]
    notes: list[str]


def _lines(path: Path) -> Iterator[tuple[Path, int, str]]:
    files = log_files(path) if path.is_dir() else [path]
    if path.is_dir() and not files:
        raise ConfigurationError(f"{path}: no request log files (requests-NNNNNN.jsonl) in it")
    for f in files:
        with f.open(encoding="utf-8") as fh:
            for n, raw in enumerate(fh, 1):
                line = raw.strip()
                if line and not line.startswith("#"):
                    yield f, n, line


def _bad(f: Path, n: int, exc: ValidationError | ValueError) -> ConfigurationError:
    if isinstance(exc, ValidationError):
        e = exc.errors()[0]
        field = ".".join(str(p) for p in e["loc"]) or "<record>"
        return ConfigurationError(
            f"{f}:{n}: not a request log record (field {field!r}: {e['msg']})"
        )
    return ConfigurationError(f"{f}:{n}: not a request log record ({exc})")


def read_request_log(path: str | Path) -> list[RequestLogRecord]:
    """Every record of a log (folder or file), sorted by arrival."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ConfigurationError(f"request log {str(p)!r} does not exist")
    out: list[RequestLogRecord] = []
    for f, n, line in _lines(p):
        try:
            out.append(RequestLogRecord.model_validate_json(line))
        except (ValidationError, ValueError) as exc:
            raise _bad(f, n, exc) from None
    out.sort(key=lambda r: r.arrival_s)
    return out


def workload_of(rec: RequestLogRecord) -> WorkloadRecord:
    """The request a log record describes, as the replay submits it."""
    done = rec.state == RequestStatus.COMPLETED and rec.output_tokens > 0
    out_tokens = rec.output_tokens if done else (rec.max_tokens or DEFAULT_OUTPUT_TOKENS)
    return WorkloadRecord(
        arrival_s=rec.arrival_s,
        input_tokens=max(1, rec.input_tokens),
        output_tokens=max(1, out_tokens),
        prompt=rec.prompt,
        prefix_blocks=tuple(rec.prefix_hashes) if rec.block_tokens == BLOCK_TOKENS else (),
        tenant=rec.user_id,
        priority=rec.priority,
        ttft_slo_ms=rec.ttft_slo_ms,
        tpot_slo_ms=rec.tpot_slo_ms,
        deadline_ms=rec.deadline_ms,
        request_id=rec.request_id,
    )


def import_request_log(path: str | Path) -> Imported:
    recs = read_request_log(path)
    kept = [r for r in recs if r.kind != RequestKind.EMBEDDING]
    skipped = {"embedding": len(recs) - len(kept)} if len(kept) < len(recs) else {}
    notes = []
    if any(r.input_tokens_source == "estimate" for r in kept):
        notes.append("some prompt lengths are the coordinator's estimate (no usage reported)")
    return Imported([workload_of(r) for r in kept], True, skipped, notes)


# -- OpenAI batch files ----------------------------------------------------------------------
Tokenize = Callable[[str], list[Any]]


def tokenizer_for(name: str) -> tuple[Tokenize, str]:
    """A tokenizer and how the import describes it."""
    if name == "words":
        return (lambda text: text.split()), "the simulator's tokenizer (one token per word)"
    if name == "estimate":
        return (
            lambda text: [text[i : i + 4] for i in range(0, len(text), 4)]
        ), "estimated at 4 characters per token (no tokenizer given)"
    try:
        from transformers import AutoTokenizer  # type: ignore[import-not-found]
    except ImportError:
        raise ConfigurationError(
            f"tokenizer {name!r} needs the transformers package (pip install transformers); "
            "or use --tokenizer estimate|words"
        ) from None
    tok = AutoTokenizer.from_pretrained(name)
    return (lambda text: list(tok.encode(text))), f"tokenizer {name}"


def _batch_text(body: dict[str, Any]) -> str:
    if isinstance(body.get("prompt"), str):
        return str(body["prompt"])
    msgs = body.get("messages")
    if not isinstance(msgs, list):
        raise ValueError("body has neither 'prompt' (a string) nor 'messages' (a list)")
    parts: list[str] = []
    for m in msgs:
        c = m.get("content") if isinstance(m, dict) else None
        if isinstance(c, str):
            parts.append(c)
        elif isinstance(c, list):
            parts.extend(str(p.get("text", "")) for p in c if isinstance(p, dict))
    return "\n".join(parts)


def import_openai_batch(path: str | Path, tokenizer: str = "estimate") -> Imported:
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigurationError(f"batch file {str(p)!r} does not exist")
    tokenize, how = tokenizer_for(tokenizer)
    out: list[WorkloadRecord] = []
    defaulted = 0
    skipped: dict[str, int] = {}
    for f, n, line in _lines(p):
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or not isinstance(row.get("body"), dict):
                raise ValueError("field 'body': expected a JSON object")
            url = str(row.get("url", ""))
            if url.endswith("/embeddings"):
                skipped["embedding"] = skipped.get("embedding", 0) + 1
                continue
            body = row["body"]
            tokens = tokenize(_batch_text(body))
            max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
            if max_tokens is None:
                defaulted += 1
                max_tokens = DEFAULT_OUTPUT_TOKENS
            if not isinstance(max_tokens, int) or max_tokens < 1:
                raise ValueError(
                    f"field 'body.max_tokens': expected an integer >= 1, got {max_tokens!r}"
                )
            out.append(
                WorkloadRecord(
                    arrival_s=0.0,
                    input_tokens=max(1, len(tokens)),
                    output_tokens=max_tokens,
                    prefix_blocks=tuple(block_hashes(tokens, BLOCK_TOKENS, BATCH_SALT)),
                    request_id=str(row["custom_id"]) if "custom_id" in row else None,
                )
            )
        except ValueError as exc:
            raise ConfigurationError(f"{f}:{n}: not an OpenAI batch line ({exc})") from None
    notes = [f"prompt lengths: {how}"]
    if defaulted:
        notes.append(
            f"{defaulted} line(s) without max_tokens: {DEFAULT_OUTPUT_TOKENS} output tokens assumed"
        )
    return Imported(out, False, skipped, notes)


def is_request_log_row(row: object) -> bool:
    return isinstance(row, dict) and "request_id" in row and "decision" in row


def is_openai_batch_row(row: object) -> bool:
    return isinstance(row, dict) and "custom_id" in row and "body" in row
