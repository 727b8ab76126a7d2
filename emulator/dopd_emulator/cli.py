"""`dopd emulate`: serve the metrics of emulated dopd, vLLM or SGLang engines until interrupted (loaded
lazily by dopd_operator.cli). Flags and the environment are read here and nowhere else in the package.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from types import FrameType

import click
from pydantic import ValidationError

from dopd_emulator.config import ClusterReplicas, EmulatorConfig, StaticReplicas, TraceLoad
from dopd_emulator.emulator import Emulator
from dopd_forecaster.traces import TraceFormatError
from dopd_operator.api import DisaggregatedModelSpec, Engine
from dopd_operator.errors import DopdError
from dopd_operator.manifest import load_model
from dopd_sim.config import default_spec, load_profile


def parse_replicas(
    value: str, kubeconfig: str | None, poll_seconds: float
) -> StaticReplicas | ClusterReplicas:
    """`cluster` or `static:P,D`."""
    if value == "cluster":
        return ClusterReplicas(kubeconfig=kubeconfig, poll_seconds=poll_seconds)
    counts = value.removeprefix("static:")
    prefill, comma, decode = counts.partition(",")
    if not value.startswith("static:") or not comma or not prefill.isdigit() or not decode.isdigit():
        raise click.BadParameter(
            f"expected 'cluster' or 'static:P,D' (for example static:2,3), got {value!r}"
        )
    return StaticReplicas(prefill=int(prefill), decode=int(decode))


def _spec_and_names(
    manifest: str | None, engine: str | None, model: str | None, name: str | None, namespace: str | None
) -> tuple[DisaggregatedModelSpec, str, str]:
    spec = default_spec()
    if manifest:
        loaded = load_model(manifest)
        spec = loaded.spec.model_copy(deep=True)
        name = name or loaded.metadata.name
        namespace = namespace or loaded.metadata.namespace
    if name is None:
        raise click.UsageError("give --name (the DisaggregatedModel's name) or a manifest with -f")
    if engine is not None:
        spec.engine = Engine(engine)  # API models validate on assignment
    if model is not None:
        spec.model = model
    return spec, name, namespace or "default"


@click.command()
@click.option(
    "--trace",
    "trace_path",
    required=True,
    help="Trace file (Azure, Mooncake, BurstGPT or canonical CSV) or synthetic:KIND[,k=v...], as dopd simulate.",
)
@click.option(
    "-f",
    "--file",
    "manifest",
    type=click.Path(exists=True, dir_okay=False),
    help="DisaggregatedModel manifest: engine, model, metric labels, profile, GPUs per replica.",
)
@click.option("--profile", help="Profile preset name or profile YAML/JSON file (overrides the manifest's).")
@click.option(
    "--engine", type=click.Choice([e.value for e in Engine]), help="Metrics format (default: the manifest's)."
)
@click.option("--name", help="The DisaggregatedModel's name (default: the manifest's).")
@click.option("--namespace", help="Its namespace (default: the manifest's, else 'default').")
@click.option("--model", help="Served model name for the model label (default: the manifest's spec.model).")
@click.option("--rate-scale", type=float, default=1.0, show_default=True, help="Multiply the arrival rate.")
@click.option(
    "--time-compression",
    type=float,
    default=1.0,
    show_default=True,
    help="Replay the trace this many times faster.",
)
@click.option(
    "--duration", "duration_s", type=float, help="Use only the first DURATION seconds of the trace."
)
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seed for rate scaling and synthetic traces."
)
@click.option(
    "--at-end",
    type=click.Choice(["loop", "stop"]),
    default="loop",
    show_default=True,
    help="At the trace's end, replay it again or send nothing more.",
)
@click.option(
    "--queue",
    type=click.Choice(["fifo", "length-aware"]),
    default="fifo",
    show_default=True,
    help="How the modelled router hands prompts to prefill replicas.",
)
@click.option(
    "--replicas-from",
    "replicas_from",
    default="cluster",
    show_default=True,
    help="'cluster': follow the Ready pods of the model's Deployments; 'static:P,D': fixed counts.",
)
@click.option(
    "--kubeconfig",
    type=click.Path(dir_okay=False),
    help="Kubeconfig (default: $KUBECONFIG, ~/.kube/config, in-cluster).",
)
@click.option(
    "--poll-seconds", type=float, default=1.0, show_default=True, help="How often to list the pods."
)
@click.option("--port", type=int, default=0, show_default=True, help="Port on 127.0.0.1 (0: a free one).")
@click.option("--vllm-legacy-names", is_flag=True, help="Also expose the vLLM names removed in 2026.")
@click.option(
    "--log-every",
    "log_every_s",
    type=float,
    default=10.0,
    show_default=True,
    help="Seconds between status lines.",
)
def emulate(
    trace_path: str,
    manifest: str | None,
    profile: str | None,
    engine: str | None,
    name: str | None,
    namespace: str | None,
    model: str | None,
    rate_scale: float,
    time_compression: float,
    duration_s: float | None,
    seed: int,
    at_end: str,
    queue: str,
    replicas_from: str,
    kubeconfig: str | None,
    poll_seconds: float,
    port: int,
    vllm_legacy_names: bool,
    log_every_s: float,
) -> None:
    """Serve /metrics of emulated engines (the simulator's engine model in real time) whose replicas
    follow the model's Ready pods, under a trace's load, until interrupted. Prometheus scrapes it."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    replicas = parse_replicas(replicas_from, kubeconfig, poll_seconds)
    try:
        spec, name, namespace = _spec_and_names(manifest, engine, model, name, namespace)
        config = EmulatorConfig(
            namespace=namespace,
            name=name,
            spec=spec,
            profile=load_profile(profile) if profile else None,
            load=TraceLoad(
                trace=trace_path,
                rate_scale=rate_scale,
                time_compression=time_compression,
                seed=seed,
                duration_seconds=duration_s,
                at_end="stop" if at_end == "stop" else "loop",
            ),
            replicas=replicas,
            queue="length-aware" if queue == "length-aware" else "fifo",
            port=port,
            vllm_legacy_names=vllm_legacy_names,
            log_every_seconds=log_every_s,
        )
        emulator = Emulator(config)
        bound = emulator.start()
    except (DopdError, ValidationError, ValueError, FileNotFoundError, TraceFormatError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    except Exception as exc:  # the first pod listing (kubernetes ApiException, ConfigException, ...)
        raise click.ClickException(f"cannot start: {type(exc).__name__}: {exc}") from exc
    click.echo(
        f"dopd emulate: {spec.engine.value} engines of {namespace}/{name} (model {spec.model!r}) on "
        f"http://127.0.0.1:{bound}/metrics; control: /control/truth, /control/faults, /control/replicas",
        err=False,
    )
    click.echo(f"port {bound}")
    sys.stdout.flush()
    _serve_until_signalled(emulator)


def _serve_until_signalled(emulator: Emulator) -> None:
    done = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        done.set()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not done.wait(0.5):
            if emulator.failure is not None:
                raise click.ClickException(f"the engine loop failed: {emulator.failure}")
    finally:
        emulator.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
