"""Bodies of the non-streamed OpenAI answers, in vLLM 0.32's shape."""

from __future__ import annotations

from typing import Any

from sage_cp_plugin.sim.sequence import SimSequence


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "completion_tokens": completion_tokens,
        "prompt_tokens_details": None,
    }


def generation_body(
    seqs: list[SimSequence],
    created: int,
    model: str,
    *,
    chat: bool,
    kv_transfer_params: dict[str, Any] | None,
) -> dict[str, Any]:
    """A ``text_completion`` or ``chat.completion`` with one choice per finished sequence."""
    prompt_tokens = sum(s.prompt_len for s in seqs)
    completion_tokens = sum(s.num_output for s in seqs)
    reason = [s.finish_reason for s in seqs]
    if chat:
        choices: list[dict[str, Any]] = [
            {
                "index": i,
                "message": {"role": "assistant", "content": s.text, "tool_calls": []},
                "logprobs": None,
                "finish_reason": reason[i],
                "stop_reason": None,
            }
            for i, s in enumerate(seqs)
        ]
    else:
        choices = [
            {
                "index": i,
                "text": s.text,
                "logprobs": None,
                "finish_reason": reason[i],
                "stop_reason": None,
                "prompt_logprobs": None,
            }
            for i, s in enumerate(seqs)
        ]
    return {
        "id": seqs[0].request_id,
        "object": "chat.completion" if chat else "text_completion",
        "created": created,
        "model": model,
        "choices": choices,
        "usage": usage(prompt_tokens, completion_tokens),
        "prompt_logprobs": None,
        "kv_transfer_params": kv_transfer_params,
    }
