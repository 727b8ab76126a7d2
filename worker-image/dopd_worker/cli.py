"""`dopd worker`, `dopd router` and `dopd profile`: the CLI edge of dopd_worker.

Loaded lazily by the main `dopd` CLI ("dopd_worker.cli:worker" ...). Nothing heavy is imported at module
import time (torch, starlette, uvicorn load inside the commands), so `dopd --help` stays fast. The
environment is read here and nowhere else.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import click

from dopd_worker.prefix_reuse import DEFAULT_SAMPLE_RATE


def _logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@click.command()
@click.option("--role", type=click.Choice(["prefill", "decode"]), required=True)
@click.option(
    "--model", required=True, help="A local HF model directory (config.json + *.safetensors) or a preset."
)
@click.option(
    "--served-model-name", default=None, help="Model name in the API and metrics (default: from --model)."
)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8000, show_default=True)
@click.option(
    "--kv-host",
    default="127.0.0.1",
    show_default=True,
    envvar="POD_IP",
    help="Decode: address the KV TCPStore listens on and publishes to prefill workers (the pod IP; "
    "read from $POD_IP when set, as the downward API sets it).",
)
@click.option("--kv-port", type=int, default=29600, show_default=True, help="Decode: KV TCPStore port.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N.")
@click.option(
    "--dtype", default="auto", show_default=True, help="auto (bf16 on GPU, fp32 on CPU), fp32, bf16, fp16."
)
@click.option("--block-size", type=int, default=16, show_default=True, help="Tokens per KV block.")
@click.option(
    "--kv-cache-tokens", type=int, default=None, help="KV capacity in tokens (default: from free memory)."
)
@click.option("--token-budget", type=int, default=4096, show_default=True, help="Prefill: tokens per batch.")
@click.option("--max-batch-size", type=int, default=64, show_default=True, help="Decode: sequences per step.")
@click.option(
    "--tpot-slo-seconds",
    type=click.FloatRange(min=0.0, min_open=True),
    default=None,
    help="Decode: the TPOT SLO; sequences waiting for room in the batch join timely ones first, the "
    "newest of them first (a sequence that waited past half its TPOT budget goes after them, oldest "
    "first). Default: first come, first served. The operator sets it from spec.slo.tpotSeconds.",
)
@click.option("--max-model-len", type=int, default=None, help="Longest prompt + output, tokens.")
@click.option("--transfer-timeout-seconds", type=float, default=30.0, show_default=True)
@click.option(
    "--drain-timeout-seconds",
    type=float,
    default=120.0,
    show_default=True,
    help="On SIGTERM or POST /drain: seconds to finish in-flight work (sequences, prefills and their KV "
    "transfers) before what is left ends with an error. The operator sets it from spec.<role>.drainSeconds.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of a random preset's weights.")
@click.option("--log-level", default="info", show_default=True)
def worker(
    role: str,
    model: str,
    served_model_name: str | None,
    host: str,
    port: int,
    kv_host: str,
    kv_port: int,
    device: str,
    dtype: str,
    block_size: int,
    kv_cache_tokens: int | None,
    token_budget: int,
    max_batch_size: int,
    tpot_slo_seconds: float | None,
    max_model_len: int | None,
    transfer_timeout_seconds: float,
    drain_timeout_seconds: float,
    seed: int,
    log_level: str,
) -> None:
    """Run a prefill or decode worker."""
    _logging(log_level)
    import faulthandler
    import signal

    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1 PID`: every thread's stack
    from dopd_worker.runtime import WorkerOptions, load
    from dopd_worker.serving import serve

    fault = os.environ.get("DOPD_FAULT_EXIT_DURING_TRANSFER")
    pause = os.environ.get("DOPD_FAULT_PAUSE_DURING_TRANSFER")
    options = WorkerOptions(
        role=role,
        model=model,
        served_model_name=served_model_name,
        host=host,
        port=port,
        kv_host=kv_host,
        kv_port=kv_port,
        device=device,
        dtype=dtype,
        block_size=block_size,
        kv_cache_tokens=kv_cache_tokens,
        token_budget=token_budget,
        max_batch_size=max_batch_size,
        tpot_slo_seconds=tpot_slo_seconds,
        max_model_len=max_model_len,
        transfer_timeout_seconds=transfer_timeout_seconds,
        drain_timeout_seconds=drain_timeout_seconds,
        seed=seed,
        fault_exit_during_transfer=int(fault) if fault else None,
        fault_pause_during_transfer=int(pause) if pause else None,
        ordered_transfers=os.environ.get("DOPD_KV_ORDERED_TRANSFERS") == "1",
    )
    try:
        loaded = load(options)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    if role == "prefill":
        from dopd_worker.prefill_server import build_prefill_app

        app, state, engine = build_prefill_app(options, loaded)
        engine.start()
        exit_code = serve(app, host, port, state)
        engine.stop()
    else:
        from dopd_worker.decode_server import build_decode_app

        app, state, dengine, pairs = build_decode_app(options, loaded)
        pairs.start()
        dengine.start()
        exit_code = serve(app, host, port, state)
        dengine.stop()
    sys.exit(exit_code)  # 0 once drained; 3 when the drain timeout ended work with errors


@click.command()
@click.option("--model", required=True, help="Model directory (for tokenizer.json) or preset name.")
@click.option("--served-model-name", default=None)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8080, show_default=True)
@click.option("--prefill", "prefill_urls", multiple=True, help="Static prefill worker URL (repeatable).")
@click.option(
    "--long-prefill",
    "long_prefill_urls",
    multiple=True,
    help="Static prefill worker URL dedicated to long prompts (repeatable).",
)
@click.option("--decode", "decode_urls", multiple=True, help="Static decode worker URL (repeatable).")
@click.option(
    "--workers-file",
    type=click.Path(path_type=Path),
    default=None,
    help='JSON {"prefill": [...], "prefill_long": [...], "decode": [...]}, re-read on change.',
)
@click.option(
    "--k8s-namespace",
    default=None,
    help="Discover workers from the role Services' EndpointSlices in this namespace (ready endpoints "
    "take new work; terminating ones drain).",
)
@click.option("--k8s-prefill-service", default=None)
@click.option("--k8s-long-prefill-service", default=None)
@click.option("--k8s-decode-service", default=None)
@click.option("--k8s-port-name", default="http", show_default=True)
@click.option(
    "--policy", type=click.Choice(["length-aware", "fifo"]), default="length-aware", show_default=True
)
@click.option("--aging-seconds", type=float, default=5.0, show_default=True)
@click.option(
    "--dispatch-deadline-seconds",
    type=float,
    default=None,
    help="Length-aware: a prompt that waited this long can no longer meet the TTFT SLO and is served after "
    "every prompt that still can (2/3 of the SLO is a good value). For a router without admission: with "
    "--ttft-slo-seconds such prompts are answered 429 at their queue deadline instead.",
)
@click.option("--long-prompt-tokens", type=int, default=1024, show_default=True)
@click.option("--prefill-token-budget", type=int, default=4096, show_default=True)
@click.option("--max-model-len", type=int, default=None, help="Reject prompt + max_tokens above this.")
@click.option(
    "--max-retries",
    type=int,
    default=1,
    show_default=True,
    help="Retries of a request that failed before its first token.",
)
@click.option(
    "--queue-timeout-seconds",
    type=float,
    default=600.0,
    show_default=True,
    help="Fail a request (503) that no prefill worker took within this time.",
)
@click.option(
    "--ttft-slo-seconds",
    type=float,
    default=None,
    help="Admission: shed (429, Retry-After) a request whose predicted TTFT exceeds its class's share of "
    "this SLO, and drop a queued one that can no longer meet it. Without it every request is queued.",
)
@click.option(
    "--admission-slo-fraction",
    "admission_slo_fractions",
    multiple=True,
    metavar="CLASS=FRACTION",
    help="Share of the TTFT SLO a class's predicted TTFT may reach (x-dopd-priority header: interactive, "
    "standard, batch; defaults 0.95, 0.8, 0.5). Repeatable.",
)
@click.option(
    "--queue-ttl-seconds",
    type=float,
    default=None,
    help="Admission: longest wait plus own prefill before a queued request is dropped (default: the TTFT SLO).",
)
@click.option(
    "--tpot-slo-seconds",
    type=float,
    default=None,
    help="Admission: also shed new requests while the decode workers' measured inter-token latency is "
    "above a class's share of this SLO (interactive 1.0, standard 0.95, batch 0.9).",
)
@click.option(
    "--prefix-reuse-sample-rate",
    type=click.FloatRange(0.0, 1.0, min_open=True),
    default=DEFAULT_SAMPLE_RATE,
    show_default=True,
    help="Share of prompt blocks (by hash) whose reuse distance dopd_prompt_reuse_distance_tokens "
    "records: the operator's prefix-cache curve. Higher is more precise at low traffic and costs memory.",
)
@click.option("--log-level", default="info", show_default=True)
def router(
    model: str,
    served_model_name: str | None,
    host: str,
    port: int,
    prefill_urls: tuple[str, ...],
    long_prefill_urls: tuple[str, ...],
    decode_urls: tuple[str, ...],
    workers_file: Path | None,
    k8s_namespace: str | None,
    k8s_prefill_service: str | None,
    k8s_long_prefill_service: str | None,
    k8s_decode_service: str | None,
    k8s_port_name: str,
    policy: str,
    aging_seconds: float,
    dispatch_deadline_seconds: float | None,
    long_prompt_tokens: int,
    prefill_token_budget: int,
    max_model_len: int | None,
    max_retries: int,
    queue_timeout_seconds: float,
    ttft_slo_seconds: float | None,
    admission_slo_fractions: tuple[str, ...],
    queue_ttl_seconds: float | None,
    tpot_slo_seconds: float | None,
    prefix_reuse_sample_rate: float,
    log_level: str,
) -> None:
    """Run the OpenAI-compatible router with length-aware prefill scheduling."""
    _logging(log_level)
    from dopd_worker.discovery import Discovery, FileDiscovery, KubernetesDiscovery, StaticDiscovery
    from dopd_worker.router_admission import admission_config
    from dopd_worker.router_main import RouterOptions, run_router
    from dopd_worker.scheduler import Policy, SchedulerConfig

    discovery: Discovery
    if k8s_namespace:
        if not (k8s_prefill_service and k8s_decode_service):
            raise click.UsageError("--k8s-namespace needs --k8s-prefill-service and --k8s-decode-service")
        discovery = KubernetesDiscovery(
            k8s_namespace,
            k8s_prefill_service,
            k8s_decode_service,
            k8s_long_prefill_service,
            k8s_port_name,
            kubeconfig=os.environ.get("KUBECONFIG"),  # unset in a pod: its ServiceAccount
        )
    elif workers_file is not None:
        discovery = FileDiscovery(workers_file)
    else:
        if (not prefill_urls and not long_prefill_urls) or not decode_urls:
            raise click.UsageError("give --prefill/--decode URLs, --workers-file, or --k8s-namespace")
        discovery = StaticDiscovery(list(prefill_urls), list(long_prefill_urls), list(decode_urls))
    try:
        admission = admission_config(
            ttft_slo_seconds, admission_slo_fractions, queue_ttl_seconds, tpot_slo_seconds
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    if dispatch_deadline_seconds is not None and not dispatch_deadline_seconds > 0:
        raise click.UsageError(
            f"--dispatch-deadline-seconds must be positive (2/3 of the TTFT SLO is a good value), "
            f"got {dispatch_deadline_seconds:g}"
        )
    if dispatch_deadline_seconds is not None and admission is not None:
        raise click.UsageError(
            "--dispatch-deadline-seconds is for a router without admission: with --ttft-slo-seconds a "
            "prompt that can no longer meet the SLO is answered 429 at its queue deadline; drop one of them"
        )
    try:
        scheduler = SchedulerConfig(
            policy=Policy(policy),
            aging_seconds=aging_seconds,
            long_prompt_tokens=long_prompt_tokens,
            token_budget=prefill_token_budget,
            late_seconds=dispatch_deadline_seconds,
        )
    except ValueError as exc:
        raise click.UsageError(
            f"--aging-seconds, --long-prompt-tokens, --prefill-token-budget: {exc}"
        ) from exc
    options = RouterOptions(
        model=model,
        served_model_name=served_model_name,
        host=host,
        port=port,
        max_model_len=max_model_len,
        max_retries=max_retries,
        queue_timeout_seconds=queue_timeout_seconds,
        admission=admission,
        scheduler=scheduler,
        prefix_reuse_sample_rate=prefix_reuse_sample_rate,
    )
    run_router(options, discovery)


@click.command()
@click.option("--model", required=True, help="Model directory or preset.")
@click.option(
    "--out", "out_path", type=click.Path(path_type=Path), required=True, help="Profile file (.yaml/.json)."
)
@click.option("--device", default="auto", show_default=True)
@click.option("--dtype", default="auto", show_default=True)
@click.option("--name", default=None, help="Profile name (default: <model>-<device>).")
@click.option(
    "--prompt-lengths", default=None, help="Comma-separated (in-process default 32,64,128,256,512,1024)."
)
@click.option("--batch-sizes", default=None, help="Comma-separated (in-process default 1,4,16,32).")
@click.option("--context-lengths", default=None, help="Comma-separated (in-process default 64,256,1024).")
@click.option("--kv-cache-tokens", type=int, default=None)
@click.option("--repeats", type=int, default=3, show_default=True)
@click.option(
    "--served",
    is_flag=True,
    help="Measure end to end through the router's HTTP API (starts a prefill worker, a decode worker and "
    "a router unless --router is given) instead of in-process kernel time.",
)
@click.option("--router", "router_url", default=None, help="--served: measure this running router instead.")
@click.option(
    "--served-model-name", default="profile", show_default=True, help="--served: model name to request."
)
@click.option(
    "--output-tokens", type=int, default=24, show_default=True, help="--served: tokens per decode probe."
)
@click.option(
    "--token-budget", type=int, default=4096, show_default=True, help="--served: prefill token budget."
)
@click.option("--max-batch-size", type=int, default=64, show_default=True)
def profile(
    model: str,
    out_path: Path,
    device: str,
    dtype: str,
    name: str | None,
    prompt_lengths: str | None,
    batch_sizes: str | None,
    context_lengths: str | None,
    kv_cache_tokens: int | None,
    repeats: int,
    served: bool,
    router_url: str | None,
    served_model_name: str,
    output_tokens: int,
    token_budget: int,
    max_batch_size: int,
) -> None:
    """Measure this worker (TTFT vs prompt length, step time vs batch and context) and write a profile.

    In-process by default (kernel time); --served measures the served path through the router."""
    from dopd_worker.profiler import ProfileRequest, run_profile

    def ints(text: str | None, default: Sequence[int]) -> list[int]:
        if text is None:
            return list(default)
        return [int(x) for x in text.split(",") if x.strip()]

    if served or router_url is not None:
        from dopd_worker.served_profile import ServedProfileRequest, run_served_profile

        served_request = ServedProfileRequest(
            model=model,
            device=device,
            dtype=dtype,
            name=name,
            router_url=router_url,
            prompt_lengths=ints(prompt_lengths, ServedProfileRequest.prompt_lengths),
            batch_sizes=ints(batch_sizes, ServedProfileRequest.batch_sizes),
            context_lengths=ints(context_lengths, ServedProfileRequest.context_lengths),
            output_tokens=output_tokens,
            repeats=repeats,
            kv_cache_tokens=kv_cache_tokens,
            token_budget=token_budget,
            max_batch_size=max_batch_size,
            served_model_name=served_model_name,
        )
        click.echo(run_served_profile(served_request, out_path))
        return
    request = ProfileRequest(
        model=model,
        device=device,
        dtype=dtype,
        name=name,
        prompt_lengths=ints(prompt_lengths, ProfileRequest.prompt_lengths),
        batch_sizes=ints(batch_sizes, ProfileRequest.batch_sizes),
        context_lengths=ints(context_lengths, ProfileRequest.context_lengths),
        kv_cache_tokens=kv_cache_tokens,
        repeats=repeats,
        max_batch_size=max_batch_size,
    )
    result = run_profile(request, out_path)
    click.echo(result)
