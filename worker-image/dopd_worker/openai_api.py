"""The router's OpenAI-compatible HTTP surface: /v1/completions, /v1/chat/completions (a simple chat
template), SSE streaming, /v1/models, plus /health, /drain and /metrics. Validates every request into a
`router.Generation` (clear 4xx errors for bad JSON, unknown model, bad parameters, over-long prompts),
runs it through `router.Router`, and formats the result the way the official openai client expects.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from dopd_worker.admission import PRIORITY_HEADER, Priority, Reason
from dopd_worker.metrics import Metrics
from dopd_worker.prefix_reuse import ReuseSampler, prompt_block_hashes
from dopd_worker.router import Generation, Router, RouterError
from dopd_worker.router_admission import AdmissionError, parse_priority, rejection_body, rejection_response
from dopd_worker.sampling import SamplingParams
from dopd_worker.serving import ProcessState, error_response
from dopd_worker.tokenizer import IncrementalDecoder, Tokenizer

log = logging.getLogger(__name__)


def chat_prompt(messages: list[dict[str, Any]]) -> str:
    """The simple chat template: one `<|role|>` header line per message, then the assistant header."""
    parts = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):  # [{"type": "text", "text": ...}]
            content = "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        parts.append(f"<|{message.get('role', 'user')}|>\n{content or ''}\n")
    return "".join(parts) + "<|assistant|>\n"


@dataclass(frozen=True)
class ParsedRequest:
    prompt_ids: list[int]
    sampling: SamplingParams
    stream: bool
    stop: tuple[str, ...]


def _number(body: dict[str, Any], key: str, default: float, lo: float, hi: float) -> float:
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise RouterError(
            400, f"'{key}' must be a number in [{lo}, {hi}], got {value!r}", "invalid_request_error"
        )
    return float(value)


# Request bodies larger than this are parsed and tokenized off the event loop (`parse_body`); smaller ones
# cost less than the thread hop.
PARSE_OFF_LOOP_BYTES = 16_384


class OpenAIServer:
    def __init__(
        self,
        router: Router,
        tokenizer: Tokenizer,
        model_name: str,
        max_model_len: int,
        metrics: Metrics,
        vocab_size: int,
        reuse: ReuseSampler | None = None,
    ) -> None:
        self.router = router
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.max_model_len = max_model_len
        self.vocab_size = vocab_size
        self.metrics = metrics
        self.labels = {"role": "router", "model": model_name}
        self.reuse = reuse if reuse is not None else ReuseSampler()
        # The counters the operator reads exist at zero from the start: a series born with its first
        # increment loses that increment to increase(), and a missing series reads as unknown.
        metrics.requests_arrived_total.labels(**self.labels)
        # the latency histograms too: their first observations would be lost the same way
        for histogram in (
            metrics.ttft_seconds,
            metrics.inter_token_latency_seconds,
            metrics.request_tpot_seconds,
        ):
            histogram.labels(**self.labels)
        for priority in Priority:
            metrics.requests_expired_total.labels(**self.labels, priority=priority.value)
            for reason in Reason:
                if reason is not Reason.EXPIRED:
                    metrics.requests_rejected_total.labels(
                        **self.labels, reason=reason.value, priority=priority.value
                    )

    async def parse_body(self, raw: bytes, chat: bool) -> tuple[dict[str, Any], ParsedRequest]:
        """The request's JSON and its parsed form. A body over `PARSE_OFF_LOOP_BYTES` is parsed and
        tokenized in a thread: a `tokenizer.json` takes 0.5-1.7 us a token here depending on the text
        (docs/benchmarks/worker.md; a 128k-token prompt, up to 0.2 s), and on the event loop every stream the router relays would stall that long (the tokenizer
        releases the GIL, `tokenizer.HFTokenizer`)."""
        if len(raw) > PARSE_OFF_LOOP_BYTES:
            return await asyncio.to_thread(self._parse_raw, raw, chat)
        return self._parse_raw(raw, chat)

    def _parse_raw(self, raw: bytes, chat: bool) -> tuple[dict[str, Any], ParsedRequest]:
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise RouterError(400, f"invalid JSON body: {exc}", "invalid_request_error") from exc
        return body, self.parse(body, chat)

    def parse(self, body: Any, chat: bool) -> ParsedRequest:
        if not isinstance(body, dict):
            raise RouterError(400, "request body must be a JSON object", "invalid_request_error")
        model = body.get("model")
        if model != self.model_name:
            raise RouterError(
                404,
                f"The model '{model}' does not exist; this router serves '{self.model_name}'",
                "model_not_found",
            )
        if body.get("n", 1) != 1:
            raise RouterError(400, "only n=1 is supported", "invalid_request_error")
        if chat:
            messages = body.get("messages")
            if (
                not isinstance(messages, list)
                or not messages
                or not all(isinstance(m, dict) for m in messages)
            ):
                raise RouterError(
                    400, "'messages' must be a non-empty list of objects", "invalid_request_error"
                )
            prompt_ids = self.tokenizer.encode(chat_prompt(messages))
            max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        else:
            prompt = body.get("prompt")
            if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
                prompt = prompt[0]
            if isinstance(prompt, str):
                prompt_ids = self.tokenizer.encode(prompt)
            elif (
                isinstance(prompt, list)
                and prompt
                and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt)
            ):
                prompt_ids = [int(t) for t in prompt]
                if not all(0 <= t < self.vocab_size for t in prompt_ids):
                    raise RouterError(
                        400, f"prompt token ids must be in [0, {self.vocab_size})", "invalid_request_error"
                    )
            else:
                raise RouterError(
                    400,
                    "'prompt' must be a string, a one-string list, or a list of token ids",
                    "invalid_request_error",
                )
            max_tokens = body.get("max_tokens")
        if max_tokens is None:
            max_tokens = 16
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise RouterError(
                400, f"'max_tokens' must be a positive integer, got {max_tokens!r}", "invalid_request_error"
            )
        total = len(prompt_ids) + max_tokens
        if total > self.max_model_len:
            raise RouterError(
                400,
                f"This model's maximum context length is {self.max_model_len} tokens. However, you requested "
                f"{total} tokens ({len(prompt_ids)} in the prompt, {max_tokens} for the completion).",
                "context_length_exceeded",
            )
        seed = body.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise RouterError(400, f"'seed' must be an integer, got {seed!r}", "invalid_request_error")
        stop = body.get("stop") or ()
        if isinstance(stop, str):
            stop = (stop,)
        if not all(isinstance(s, str) and s for s in stop):
            raise RouterError(
                400, "'stop' must be a string or a list of non-empty strings", "invalid_request_error"
            )
        sampling = SamplingParams(
            max_tokens=max_tokens,
            temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
            top_p=_number(body, "top_p", 1.0, 1e-9, 1.0),
            seed=seed,
            ignore_eos=bool(body.get("ignore_eos", False)),
        )
        return ParsedRequest(prompt_ids, sampling, bool(body.get("stream", False)), tuple(stop))

    def _record_reuse(self, prompt_ids: list[int]) -> None:
        """What the prefill pool's prefix cache will be asked for: each sampled block's reuse distance
        (the hit rate at every pool size) and position in its prompt (how the hits fall on prompts), and
        the samples an unskewed stream would have given."""
        histogram = self.metrics.prompt_reuse_distance_tokens.labels(**self.labels)
        sampled = self.metrics.prompt_reuse_sampled_position_ratio.labels(**self.labels)
        reused = self.metrics.prompt_reuse_reused_position_ratio.labels(**self.labels)
        expected_before = self.reuse.expected_samples
        blocks = prompt_block_hashes(prompt_ids, self.reuse.block_tokens)
        for position, distance_tokens in self.reuse.observe_positions(blocks):
            histogram.observe(distance_tokens)
            sampled.observe(position)
            if math.isfinite(distance_tokens):
                reused.observe(position)
        expected = self.reuse.expected_samples - expected_before
        self.metrics.prompt_reuse_expected_samples_total.labels(**self.labels).inc(expected)

    async def _texts(self, gen: Generation, stop: tuple[str, ...]) -> AsyncIterator[str]:
        """Text deltas of a generation; cuts at a stop string (and ends the upstream stream there)."""
        decoder = IncrementalDecoder(self.tokenizer)
        text = ""
        last = first = time.monotonic()
        gaps = 0
        tokens = self.router.generate(gen)
        try:
            async for token in tokens:
                now = time.monotonic()
                if gen.first_token_seconds is None:
                    gen.first_token_seconds = now - gen.arrival_seconds
                    self.metrics.ttft_seconds.labels(**self.labels).observe(gen.first_token_seconds)
                    first = now
                else:
                    self.metrics.inter_token_latency_seconds.labels(**self.labels).observe(now - last)
                    # the decode pace admission reads: the steps' pace, so not the first gap, which
                    # holds the sequence's wait for a slot (the first token leaves with its KV)
                    if self.router.admission is not None and gaps:
                        self.router.admission.pace.observe(now - last, 1.0, now)
                    gaps += 1
                last = now
                self.metrics.generation_tokens_total.labels(**self.labels).inc()
                delta = decoder.push(token)
                if stop and delta:
                    text += delta
                    hit = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
                    if hit >= 0:
                        self._finished_gaps(first, last, gaps)
                        yield delta[: max(0, hit - (len(text) - len(delta)))]
                        gen.finish_reason = "stop"
                        return
                if delta:
                    yield delta
            self._finished_gaps(first, last, gaps)
            tail = decoder.flush()
            if tail:
                yield tail
        finally:
            await tokens.aclose()

    def _finished_gaps(self, first_s: float, last_s: float, gaps: int) -> None:
        """A request finished: its TPOT as its user saw it, the mean gap from its first token to its last
        (none for a one-token answer). A failed or abandoned stream is not a finished request."""
        if gaps:
            self.metrics.request_tpot_seconds.labels(**self.labels).observe((last_s - first_s) / gaps)

    def _account(self, gen: Generation, completion_tokens: int, status: str) -> None:
        self.metrics.generation_tokens.labels(**self.labels).observe(completion_tokens)
        self.metrics.status(status)

    async def handle(self, request: Request, chat: bool) -> Response:
        try:
            body, parsed = await self.parse_body(await request.body(), chat)
            try:
                priority = parse_priority(request.headers.get(PRIORITY_HEADER))
            except ValueError as exc:
                raise RouterError(400, str(exc), "invalid_request_error") from exc
        except RouterError as err:
            self.metrics.status("rejected")
            return error_response(err.status, err.message, err.kind)
        gen = Generation(parsed.prompt_ids, parsed.sampling, priority=priority)
        # Every valid request is an arrival, shed or not: the router's arrival rate and prompt lengths are
        # the demand's (admission sheds long prompts first, so the prefill workers' lengths are not).
        self.metrics.requests_arrived_total.labels(**self.labels).inc()
        self.metrics.prompt_tokens_total.labels(**self.labels).inc(len(gen.prompt_ids))
        self.metrics.prompt_tokens.labels(**self.labels).observe(len(gen.prompt_ids))
        verdict = self.router.admit(gen)
        if verdict is not None and not verdict.admitted:
            return rejection_response(verdict)  # at once, before any queueing
        self._record_reuse(gen.prompt_ids)
        created = int(time.time())
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        if parsed.stream:
            return EventSourceResponse(self._sse(gen, parsed, chat, rid, created), ping=15)
        pieces: list[str] = []
        try:
            async for delta in self._texts(gen, parsed.stop):
                pieces.append(delta)
        except AdmissionError as shed:  # expired in the queue: counted by the router, not an error
            return rejection_response(shed.verdict)
        except RouterError as err:
            self._account(gen, 0, "error")
            return error_response(err.status, err.message, err.kind)
        completion_tokens = len(gen.tokens)
        self._account(gen, completion_tokens, "ok")
        text = "".join(pieces)
        usage = {
            "prompt_tokens": len(gen.prompt_ids),
            "completion_tokens": completion_tokens,
            "total_tokens": len(gen.prompt_ids) + completion_tokens,
        }
        choice: dict[str, Any]
        if chat:
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": gen.finish_reason,
                "logprobs": None,
            }
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": gen.finish_reason}
        if body.get("return_token_ids"):  # extension (as vLLM's): the generated ids, for exact comparisons
            choice["token_ids"] = list(gen.tokens)
        body_out = {
            "id": rid,
            "object": "chat.completion" if chat else "text_completion",
            "created": created,
            "model": self.model_name,
            "choices": [choice],
            "usage": usage,
        }
        headers = {
            "x-dopd-queue-seconds": f"{gen.queue_seconds:.6f}",
            "x-dopd-ttft-seconds": f"{gen.first_token_seconds or 0.0:.6f}",
            "x-dopd-decode-worker": gen.decode_url or "",
            "x-dopd-prefill-worker": gen.prefill_url or "",
        }
        return JSONResponse(body_out, headers=headers)

    async def _sse(
        self, gen: Generation, parsed: ParsedRequest, chat: bool, rid: str, created: int
    ) -> AsyncIterator[dict[str, str]]:
        obj = "chat.completion.chunk" if chat else "text_completion"

        def chunk(delta: str | None, finish: str | None, first: bool = False) -> dict[str, str]:
            choice: dict[str, Any]
            if chat:
                d: dict[str, Any] = {"role": "assistant"} if first else {}
                if delta is not None:
                    d["content"] = delta
                choice = {"index": 0, "delta": d, "finish_reason": finish, "logprobs": None}
            else:
                choice = {"index": 0, "text": delta or "", "logprobs": None, "finish_reason": finish}
            return {
                "data": json.dumps(
                    {
                        "id": rid,
                        "object": obj,
                        "created": created,
                        "model": self.model_name,
                        "choices": [choice],
                    }
                )
            }

        sent = 0
        try:
            if chat:
                yield chunk("", None, first=True)
            async for delta in self._texts(gen, parsed.stop):
                sent += 1
                yield chunk(delta, None)
            yield chunk(None if chat else "", gen.finish_reason)
            self._account(gen, len(gen.tokens), "ok")
        except AdmissionError as shed:  # expired in the queue after the stream began
            yield {"data": json.dumps({"error": rejection_body(shed.verdict)})}
        except RouterError as err:
            self._account(gen, 0, "error")
            yield {
                "data": json.dumps({"error": {"message": err.message, "type": err.kind, "code": err.status}})
            }
        yield {"data": "[DONE]"}


def build_router_app(server: OpenAIServer, state: ProcessState) -> Starlette:
    async def completions(request: Request) -> Response:
        if state.draining:
            return error_response(503, "router is draining", "unavailable")
        return await server.handle(request, chat=False)

    async def chat_completions(request: Request) -> Response:
        if state.draining:
            return error_response(503, "router is draining", "unavailable")
        return await server.handle(request, chat=True)

    async def models(request: Request) -> JSONResponse:
        return JSONResponse(
            {
                "object": "list",
                "data": [
                    {
                        "id": server.model_name,
                        "object": "model",
                        "created": 0,
                        "owned_by": "dopd",
                        "max_model_len": server.max_model_len,
                    }
                ],
            }
        )

    async def workers(request: Request) -> JSONResponse:
        return JSONResponse(
            {
                url: {
                    "role": s.role,
                    "lane": s.lane.value,
                    "healthy": s.healthy,
                    "present": s.present,
                    "kv_usage": s.kv_usage,
                    "inflight_requests": s.inflight_requests,
                }
                for url, s in server.router.workers.items()
            }
        )

    return Starlette(
        routes=[
            Route("/v1/completions", completions, methods=["POST"]),
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/workers", workers, methods=["GET"]),
            *state.routes(),
        ]
    )
