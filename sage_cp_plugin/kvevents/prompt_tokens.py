"""The token ids an engine will see for a request, computed by the coordinator itself.

The index keys blocks by a hash chain over token ids (`index.prompt_block_hashes`), so a
router can only look a request up if it knows the request's token ids exactly as the engine
tokenizes it. They are computed once per request at admission, outside any decision:

- ``sim``: the simulator's own deterministic tokenizer (one word = one token, fixed chat
  template; `sage_cp_plugin.sim.tokens`).
- a path to a ``tokenizer.json`` (or a directory holding one) of the served model, read with
  the ``tokenizers`` library: completions prompts are encoded with the special tokens vLLM
  adds (BOS). Chat requests return None -- the chat template is a Jinja program the
  coordinator does not run -- and fall back to the approximate prefix index.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from sage_cp_plugin.errors import ConfigurationError
from sage_cp_plugin.sim import tokens as sim_tokens
from sage_cp_plugin.types import RequestKind, RequestMetadata


class PromptTokenizer(Protocol):
    def token_ids(self, request: RequestMetadata) -> list[int] | None:
        """The prompt's token ids as the engine computes them; None when unknown."""


class SimPromptTokenizer:
    def token_ids(self, request: RequestMetadata) -> list[int] | None:
        if request.kind == RequestKind.COMPLETION and request.prompt is not None:
            words = sim_tokens.tokenize(request.prompt)
        elif request.kind == RequestKind.CHAT and request.messages is not None:
            words = sim_tokens.chat_prompt(
                (str(m["role"]), sim_tokens.message_text(m.get("content")))
                for m in request.messages
            )
        else:
            return None
        return [sim_tokens.token_id(w) for w in words]


class HFPromptTokenizer:
    def __init__(self, path: str | Path) -> None:
        from tokenizers import Tokenizer

        p = Path(path)
        file = p / "tokenizer.json" if p.is_dir() else p
        try:
            self._tok = Tokenizer.from_file(str(file))
        except Exception as exc:  # the library raises a bare Exception on a bad file
            raise ConfigurationError(
                f"cannot load tokenizer {str(file)!r} (a tokenizer.json or a directory "
                f"holding one is expected): {exc}"
            ) from exc

    def token_ids(self, request: RequestMetadata) -> list[int] | None:
        if request.kind != RequestKind.COMPLETION or request.prompt is None:
            return None
        return list(self._tok.encode(request.prompt, add_special_tokens=True).ids)


def load_tokenizer(spec: str) -> PromptTokenizer:
    """``"sim"`` or a path (see the module docstring)."""
    if spec == "sim":
        return SimPromptTokenizer()
    return HFPromptTokenizer(spec)
