"""The HTTP face of one simulated instance: vLLM 0.32's OpenAI-compatible server.

``create_app(config)`` returns a plain Starlette app that runs under uvicorn (real sockets) or
in-process behind ``httpx.ASGITransport`` (virtual time). Handlers are deliberately lean: in
zero-latency mode the time spent here is the simulator's whole cost.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
import orjson
from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from sage_cp_plugin import fastjson
from sage_cp_plugin.kvevents.events import EventBatch
from sage_cp_plugin.kvevents.publisher import StepEvents, ZmqEventPublisher
from sage_cp_plugin.sim import tokens as tok
from sage_cp_plugin.sim.config import FaultConfig, SimInstanceConfig
from sage_cp_plugin.sim.engine import PromptTooLongError, SimEngine
from sage_cp_plugin.sim.metrics import CONTENT_TYPE
from sage_cp_plugin.sim.presets import PRESETS
from sage_cp_plugin.sim.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    SimHTTPError,
    TokenizeRequest,
    error_response,
    remote_prefill_params,
    validation_message,
)
from sage_cp_plugin.sim.responses import generation_body
from sage_cp_plugin.sim.sequence import RemotePrefill, SimSequence
from sage_cp_plugin.sim.streaming import SSEResponse, chat_chunks, completion_chunks
from sage_cp_plugin.tracing import engine as engine_tracing

M = TypeVar("M", bound=BaseModel)
Handler = Callable[[Request], Awaitable[Response]]
_WALL_CLOCK_AT_IMPORT = 1_700_000_000  # fixed epoch for ``created``; see SimInstance.created


def _json(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(body), status, media_type="application/json")


def _openai_errors(handler: Handler) -> Handler:
    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except SimHTTPError as exc:
            return error_response(exc.status, exc.message, exc.param)

    return wrapped


class SimInstance:
    """Config, engine, faults and request handlers of one simulated server."""

    def __init__(self, config: SimInstanceConfig) -> None:
        self.config = config
        self.engine = SimEngine(config)
        self.faults: FaultConfig = config.faults
        self._rng = random.Random(config.seed)
        self._ids = 0
        self._id_base = uuid.uuid4().hex[:8]
        self._served = set(config.served_model_names)
        self._tp = PRESETS[config.preset].tp
        self._closed = asyncio.Event()
        # Set (and replaced) when a `hang` fault is cleared: the hanging requests then go on.
        self._hang_cleared = asyncio.Event()
        self.kv_publisher: ZmqEventPublisher | None = None
        if config.kv_events_endpoint is not None:
            self.kv_publisher = ZmqEventPublisher(
                config.kv_events_endpoint,
                config.kv_events_replay_endpoint,
                topic=config.kv_events_topic,
            )
            self.attach_kv_events(self.kv_publisher.publish)
            with contextlib.suppress(RuntimeError):  # no loop yet: started by the lifespan
                self.kv_publisher.start()

    def attach_kv_events(self, on_batch: Callable[[EventBatch], None]) -> None:
        """Hand each engine step's KV-cache events to ``on_batch`` (in-process replays use
        this directly; ``kv_events_endpoint`` publishes them over ZeroMQ)."""
        self.engine.kv.on_event = StepEvents(on_batch).add

    async def aclose(self) -> None:
        """Stop the engine; every open stream ends and hanging requests return."""
        self._closed.set()
        await self.engine.stop()
        if self.kv_publisher is not None:
            await self.kv_publisher.aclose()
            self.kv_publisher = None

    async def reset_prefix_cache(self, request: Request) -> Response:
        # vLLM's /reset_prefix_cache: refused while requests hold KV blocks.
        if self.engine.kv.reset_prefix_cache():
            return Response(status_code=200)
        return _json({"error": "cannot reset the prefix cache while requests run"}, 503)

    def created(self) -> int:
        # OpenAI's ``created`` is a Unix timestamp. The simulator never reads the wall clock
        # (it may run on a virtual clock), so it reports a fixed epoch plus loop seconds.
        return _WALL_CLOCK_AT_IMPORT + int(asyncio.get_running_loop().time())

    def _next_id(self, prefix: str) -> str:
        self._ids += 1
        return f"{prefix}-{self._id_base}{self._ids}"

    # ------------------------------------------------------------ request plumbing

    async def _parse(self, request: Request, model: type[M]) -> M:
        return self._parse_body(await request.body(), model)

    def _parse_body(self, raw: bytes, model: type[M]) -> M:
        try:
            data = fastjson.loads(raw)  # json.loads's value and errors, faster
        except ValueError as exc:
            raise SimHTTPError(400, f"Invalid JSON in request body: {exc}") from None
        if not isinstance(data, dict):
            raise SimHTTPError(400, f"request body must be a JSON object, got {data!r}")
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            msg, param = validation_message(exc)
            raise SimHTTPError(400, msg, param) from None

    def _model(self, name: str | None) -> str:
        if name is None:
            return self.config.model_name
        if name not in self._served:
            raise SimHTTPError(404, f"The model `{name}` does not exist.", "model")
        return name

    async def _fault_gate(self) -> Response | None:
        f = self.faults
        if f.hang:
            # "Never": until the fault is cleared or the instance shuts down.
            waits = [
                asyncio.ensure_future(self._closed.wait()),
                asyncio.ensure_future(self._hang_cleared.wait()),
            ]
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()
            if self._closed.is_set():
                return error_response(503, "instance shutting down")
            f = self.faults
        if f.slow_ms:
            await asyncio.sleep(f.slow_ms / 1000)
        if f.rate_limit_rate and self._rng.random() < f.rate_limit_rate:
            return error_response(
                429,
                "simulated rate limit (fault injection)",
                headers={"Retry-After": f"{f.retry_after_s:g}"},
            )
        if f.error_rate and self._rng.random() < f.error_rate:
            return error_response(500, "simulated internal server error (fault injection)")
        return None

    async def _api_overhead(self) -> None:
        """The API server's per-request work before the engine sees the request (real vLLM
        parses, renders and tokenizes in its front-end process, beside the engine's steps);
        fitted by `sage-cp sim calibrate`, 0 by default."""
        if self.config.request_overhead_ms:
            await asyncio.sleep(self.config.request_overhead_ms * self.config.time_scale / 1000)

    def _submit(self, prompt: list[str] | str, max_tokens: int, **kw: Any) -> SimSequence:
        try:
            return self.engine.submit(prompt, max_tokens, **kw)
        except PromptTooLongError as exc:
            raise SimHTTPError(400, str(exc), "messages") from None

    # ------------------------------------------------------------ generation

    async def completions(self, request: Request) -> Response:
        return await self.completion(await request.body(), request.headers)

    async def chat_completions(self, request: Request) -> Response:
        return await self.chat_completion(await request.body(), request.headers)

    # The handlers' work from the request's body and headers on: the direct replay
    # transport (`virtual/direct.py`) calls these without building a Starlette request.
    async def completion(self, raw: bytes, headers: Mapping[str, str]) -> Response:
        if (fault := await self._fault_gate()) is not None:
            return fault
        req = self._parse_body(raw, CompletionRequest)
        model = self._model(req.model)
        prompts: list[list[str] | str]
        if isinstance(req.prompt, str):
            prompts = [req.prompt]  # the engine tokenizes it (`SimEngine.submit`)
        elif all(isinstance(p, int) for p in req.prompt):
            prompts = [[f"<{p}>" for p in req.prompt]]
        else:
            prompts = [tok.tokenize(str(p)) for p in req.prompt]
        return await self._generate(req, model, prompts, chat=False, headers=headers)

    async def chat_completion(self, raw: bytes, headers: Mapping[str, str]) -> Response:
        if (fault := await self._fault_gate()) is not None:
            return fault
        req = self._parse_body(raw, ChatCompletionRequest)
        model = self._model(req.model)
        prompt = tok.chat_prompt((m.role, tok.message_text(m.content)) for m in req.messages)
        return await self._generate(req, model, [prompt], chat=True, headers=headers)

    async def _generate(
        self,
        req: CompletionRequest | ChatCompletionRequest,
        model: str,
        prompts: Sequence[list[str] | str],
        *,
        chat: bool,
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        if self.config.is_embedding:
            api = "Chat Completions" if chat else "Completions"
            raise SimHTTPError(400, f"The model `{model}` does not support the {api} API.")
        max_tokens = req.max_tokens
        if isinstance(req, ChatCompletionRequest) and req.max_completion_tokens is not None:
            max_tokens = req.max_completion_tokens
        max_tokens = max_tokens or self.config.default_max_tokens
        if req.stream and len(prompts) != 1:
            raise SimHTTPError(400, "the simulator streams one prompt per request", "prompt")
        params = req.kv_transfer_params
        pin = (
            self.config.role == "prefill"
            and params is not None
            and params.get("do_remote_decode") is True
        )
        if pin:
            max_tokens = 1  # the prefill side of a PD pair produces one token only
        await self._api_overhead()
        seqs: list[SimSequence] = []
        try:
            for prompt in prompts:
                remote = None
                if self.config.role == "decode":
                    n = len(tok.tokenize(prompt) if isinstance(prompt, str) else prompt)
                    ok = remote_prefill_params(params, n)
                    if ok is not None:
                        remote = RemotePrefill(
                            ok["remote_engine_id"], ok.get("remote_request_id"), n
                        )
                seqs.append(
                    self._submit(
                        prompt,
                        max_tokens,
                        stream=req.stream,
                        remote=remote,
                        pin_for_remote_decode=pin,
                        request_id=self._next_id("chatcmpl" if chat else "cmpl"),
                        priority=req.priority,
                    )
                )
        except SimHTTPError:
            for s in seqs:
                self.engine.abort(s)
            raise
        if headers is not None:  # vLLM's `llm_request` span, when traced
            for s in seqs:
                engine_tracing.trace_request(headers, s, model)
        created = self.created()
        if req.stream:
            seq = seqs[0]
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            chunks = (chat_chunks if chat else completion_chunks)(
                seq, seq.request_id, created, model, include_usage
            )
            return SSEResponse(chunks, lambda: self.engine.abort(seq), self.faults)
        try:
            for s in seqs:
                await s.done
        finally:
            for s in seqs:
                self.engine.abort(s)  # no-op once finished; frees KV if we were cancelled
        if self.faults.malformed_json:
            return Response('{"id": "broken", "choices": [', 200, media_type="application/json")
        kv_params = self._kv_params(seqs[0]) if pin else None
        body = generation_body(seqs, created, model, chat=chat, kv_transfer_params=kv_params)
        # orjson: the same JSON values, compact, ~10x faster than json.dumps (once per
        # request of every replay); the body holds only strings, ints, None and lists.
        return Response(orjson.dumps(body), 200, media_type="application/json")

    def _kv_params(self, s: SimSequence) -> dict[str, Any]:
        """What vLLM's NixlConnector returns from a prefill: where the decode pulls the KV."""
        return {
            "do_remote_prefill": True,
            "do_remote_decode": False,
            "remote_engine_id": self.engine.engine_id,
            "remote_block_ids": s.pinned_blocks,
            "remote_request_id": s.request_id,
            "remote_host": self.config.kv_host,
            "remote_port": self.config.kv_port,
            "remote_num_tokens": s.prompt_len,
            "tp_size": self._tp,
            "pp_size": 1,
        }

    # ------------------------------------------------------------ embeddings, tokenize

    async def embeddings(self, request: Request) -> Response:
        if (fault := await self._fault_gate()) is not None:
            return fault
        req = await self._parse(request, EmbeddingRequest)
        model = self._model(req.model)
        if not self.config.is_embedding:
            raise SimHTTPError(400, f"The model `{model}` does not support the Embeddings API.")
        raw = req.input
        items: list[Any] = [raw] if isinstance(raw, str) or _is_int_list(raw) else list(raw)
        prompts = [tok.tokenize(x) if isinstance(x, str) else [f"<{t}>" for t in x] for x in items]
        await self._api_overhead()
        for i, p in enumerate(prompts):
            if not p:
                raise SimHTTPError(400, f"input[{i}] is empty; nothing to embed", "input")
        seqs = [self._submit(p, 0, pooling=True) for p in prompts]
        for s in seqs:
            engine_tracing.trace_request(request.headers, s, model)
        try:
            for s in seqs:
                await s.done
        finally:
            for s in seqs:
                self.engine.abort(s)
        if self.faults.malformed_json:
            return Response('{"object": "list", "data": [', 200, media_type="application/json")
        data = [
            {"index": i, "object": "embedding", "embedding": self._vector(p, req.encoding_format)}
            for i, p in enumerate(prompts)
        ]
        n = sum(len(p) for p in prompts)
        return _json(
            {
                "id": self._next_id("embd"),
                "object": "list",
                "created": self.created(),
                "model": model,
                "data": data,
                "usage": {
                    "prompt_tokens": n,
                    "total_tokens": n,
                    "completion_tokens": 0,
                    "prompt_tokens_details": None,
                },
            }
        )

    def _vector(self, prompt: list[str], encoding: str) -> list[float] | str:
        # Replicas of one model embed alike (as real ones do): seed by model and text only.
        rng = np.random.default_rng(
            tok.text_seed(0, self.config.model_name + "\x00" + " ".join(prompt))
        )
        v = rng.standard_normal(self.config.embedding_dim)
        v /= np.linalg.norm(v)
        if encoding == "base64":
            return base64.b64encode(v.astype(np.float32).tobytes()).decode()
        out: list[float] = v.tolist()
        return out

    async def tokenize(self, request: Request) -> Response:
        req = await self._parse(request, TokenizeRequest)
        self._model(req.model)
        if req.messages is not None:
            words = tok.chat_prompt((m.role, tok.message_text(m.content)) for m in req.messages)
        elif req.prompt is not None:
            words = tok.tokenize(req.prompt)
        else:
            raise SimHTTPError(400, "either prompt or messages is required", "prompt")
        return _json(
            {
                "count": len(words),
                "max_model_len": self.config.model_len,
                "tokens": [tok.token_id(w) for w in words],
                "token_strs": None,
            }
        )

    # ------------------------------------------------------------ server info

    async def health(self, request: Request) -> Response:
        return Response(status_code=self.faults.health_status)

    async def models(self, request: Request) -> Response:
        created = self.created()
        return _json(
            {
                "object": "list",
                "data": [
                    {
                        "id": name,
                        "object": "model",
                        "created": created,
                        "owned_by": "vllm",
                        "root": name,
                        "parent": None,
                        "max_model_len": self.config.model_len,
                        "permission": [],
                    }
                    for name in self.config.served_model_names
                ],
            }
        )

    async def metrics(self, request: Request) -> Response:
        if self.faults.metrics_garbage:
            return Response("<html>this is {not prometheus\n", media_type="text/plain")
        return Response(self.engine.render_metrics(), media_type=CONTENT_TYPE)

    async def get_faults(self, request: Request) -> Response:
        return _json(self.faults.model_dump())

    async def set_faults(self, request: Request) -> Response:
        faults = await self._parse(request, FaultConfig)
        if self.faults.hang and not faults.hang:
            self._hang_cleared.set()
            self._hang_cleared = asyncio.Event()
        self.faults = faults
        return _json(self.faults.model_dump())

    async def sim_state(self, request: Request) -> Response:
        state = self.engine.state()
        state["faults"] = self.faults.model_dump()
        state["served_model_names"] = self.config.served_model_names
        return _json(state)


def _is_int_list(x: object) -> bool:
    return isinstance(x, list) and bool(x) and all(isinstance(t, int) for t in x)


def create_app(config: SimInstanceConfig) -> Starlette:
    """A vLLM-compatible ASGI app for ``config``; ``instance_of(app)`` reaches its engine."""
    sim = SimInstance(config)
    wrap = _openai_errors
    routes = [
        Route("/health", sim.health, methods=["GET"]),
        Route("/v1/models", sim.models, methods=["GET"]),
        Route("/v1/completions", wrap(sim.completions), methods=["POST"]),
        Route("/v1/chat/completions", wrap(sim.chat_completions), methods=["POST"]),
        Route("/v1/embeddings", wrap(sim.embeddings), methods=["POST"]),
        Route("/tokenize", wrap(sim.tokenize), methods=["POST"]),
        Route("/metrics", sim.metrics, methods=["GET"]),
        Route("/sim/faults", sim.get_faults, methods=["GET"]),
        Route("/sim/faults", wrap(sim.set_faults), methods=["POST"]),
        Route("/sim/state", sim.sim_state, methods=["GET"]),
        Route("/reset_prefix_cache", sim.reset_prefix_cache, methods=["POST"]),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if sim.kv_publisher is not None:
            sim.kv_publisher.start()
        yield
        await sim.aclose()

    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.sim_instance = sim
    return app


def instance_of(app: Starlette) -> SimInstance:
    """The ``SimInstance`` behind an app made by ``create_app``."""
    sim = app.state.sim_instance
    assert isinstance(sim, SimInstance)
    return sim
