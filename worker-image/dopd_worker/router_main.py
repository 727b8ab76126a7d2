"""Assembly of the router process: tokenizer and limits from the model, metrics, the core `Router`,
the OpenAI surface, discovery and health-poll tasks, then the server. Called by `dopd router`.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from dopd_worker.admission import AdmissionConfig
from dopd_worker.config import PRESETS, load_model_config
from dopd_worker.discovery import Discovery
from dopd_worker.metrics import create_metrics
from dopd_worker.openai_api import OpenAIServer, build_router_app
from dopd_worker.prefix_reuse import DEFAULT_SAMPLE_RATE, ReuseSampler
from dopd_worker.router import Router
from dopd_worker.router_admission import RouterAdmission
from dopd_worker.scheduler import SchedulerConfig
from dopd_worker.serving import ProcessState, serve
from dopd_worker.tokenizer import load_tokenizer


@dataclass(frozen=True)
class RouterOptions:
    model: str
    served_model_name: str | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    max_model_len: int | None = None
    max_retries: int = 1
    queue_timeout_seconds: float = 600.0
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    admission: AdmissionConfig | None = None  # None: no SLO given, every request is queued
    prefix_reuse_sample_rate: float = DEFAULT_SAMPLE_RATE

    @property
    def model_name(self) -> str:
        if self.served_model_name:
            return self.served_model_name
        return self.model if self.model in PRESETS else self.model.rstrip("/").rsplit("/", 1)[-1]


def run_router(options: RouterOptions, discovery: Discovery) -> None:
    config = load_model_config(options.model)
    tokenizer = load_tokenizer(options.model, config.bos_token_id, config.eos_token_ids)
    max_len = min(options.max_model_len or config.max_position_embeddings, config.max_position_embeddings)
    metrics = create_metrics("router", options.model_name)
    admission = None
    if options.admission is not None:
        admission = RouterAdmission(options.admission, options.scheduler, max_len, metrics)
    router = Router(  # its tasks start on the server's loop
        options.scheduler,
        metrics,
        options.max_retries,
        queue_timeout_seconds=options.queue_timeout_seconds,
        admission=admission,
    )
    tasks: list[asyncio.Task[None]] = []
    state = ProcessState(
        role="router",
        metrics=metrics,
        in_flight=lambda: router.running + len(router.queue),
        details=lambda: {
            "model": options.model_name,
            "workers": len(router.workers),
            "admission": None if admission is None else admission.details(time.monotonic()),
        },
    )

    async def startup() -> None:
        tasks.append(asyncio.create_task(router.run_discovery(discovery)))
        tasks.append(asyncio.create_task(router.poll_forever()))

    server = OpenAIServer(
        router,
        tokenizer,
        options.model_name,
        max_len,
        metrics,
        config.vocab_size,
        ReuseSampler(sample_rate=options.prefix_reuse_sample_rate),
    )
    app = build_router_app(server, state)
    serve(app, options.host, options.port, state, on_startup=startup)
