"""A global budget of bytes the gateway may hold for requests in flight.

Per-request caps (body size, embedding inputs) bound one request, not a burst: eight large
embedding requests at once each hold their vectors (~32 bytes per value as Python floats) while
they run. Every `/v1` request reserves what it will hold before the gateway reads its body: the
body's declared size and, for embeddings, the estimated answer (inputs x dimensions x
`BYTES_PER_VECTOR_VALUE`; the dimensions learned per model from the last answer). A
reservation that would pass the budget while others hold bytes is refused with 429 and a
Retry-After; a request alone is always admitted (its own caps bound it), so the budget never
makes a valid request impossible, it only makes a burst wait its turn.

Counting only: no lock, no await, nothing on the event loop beyond an addition.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sage_cp_plugin.embedding_parts import BYTES_PER_VECTOR_VALUE

from .errors import GatewayError, retry_after_header

# Before a model's first answer its dimensions are unknown: assume a large embedding model's
# (OpenAI's text-embedding-3-small has 1536), so the first burst errs towards refusing.
DEFAULT_DIMENSIONS = 1536


@dataclass
class Reservation:
    """Bytes held for one request; `release` is idempotent (streams end in several ways)."""

    budget: InflightBytes
    size: int
    released: bool = False

    def grow(self, extra: int) -> None:
        """Hold `extra` more bytes (admitted by the same rule as a new reservation)."""
        self.budget._admit(extra, holding=self.size)
        self.size += extra

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.budget.held -= self.size


@dataclass
class InflightBytes:
    limit: int
    retry_after_s: float = 1.0
    held: int = 0
    refused: int = 0
    _dimensions: dict[str, int] = field(default_factory=dict)

    def reserve(self, size: int) -> Reservation:
        self._admit(size, holding=0)
        return Reservation(self, size)

    def _admit(self, size: int, *, holding: int) -> None:
        others = self.held - holding
        if others > 0 and self.held + size > self.limit:
            self.refused += 1
            raise GatewayError(
                429,
                f"the gateway holds {self.held} bytes for requests in flight; this request "
                f"needs about {size} more and the budget is {self.limit} "
                "(retry later, or raise --max-inflight-bytes)",
                code="inflight_bytes_exceeded",
                headers=retry_after_header(self.retry_after_s),
            )
        self.held += size

    # -- embedding answers -----------------------------------------------------------------
    def learn_dimensions(self, model: str | None, dimensions: int) -> None:
        if model is not None and dimensions > 0:
            self._dimensions[model] = dimensions

    def embedding_answer_bytes(self, model: object, inputs: int) -> int:
        """`model` as the client sent it (not validated yet: anything JSON holds)."""
        dims = (
            self._dimensions.get(model, DEFAULT_DIMENSIONS)
            if isinstance(model, str)
            else (DEFAULT_DIMENSIONS)
        )
        return inputs * dims * BYTES_PER_VECTOR_VALUE
