"""preStop hook: `python -m dopd_worker.drain --port 8000 --timeout-seconds 600`.

POSTs /drain to the local worker (or router) and waits until the process has exited (its port refuses
connections), so the kubelet sends SIGTERM only after in-flight requests and KV transfers are done.
Set the pod's terminationGracePeriodSeconds above the timeout. Stdlib only: it must start fast.
"""

from __future__ import annotations

import argparse
import sys
import time
import urllib.error
import urllib.request


def drain(port: int, timeout_seconds: float) -> int:
    base = f"http://127.0.0.1:{port}"
    try:
        urllib.request.urlopen(urllib.request.Request(f"{base}/drain", method="POST"), timeout=5).read()
    except (urllib.error.URLError, ConnectionError):
        return 0  # nothing listening: already gone
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{base}/health", timeout=2).read()
        except urllib.error.HTTPError:
            pass  # 503 while draining
        except (urllib.error.URLError, ConnectionError):
            return 0  # exited
        time.sleep(0.5)
    print(f"worker on port {port} still busy after {timeout_seconds}s", file=sys.stderr)
    return 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--timeout-seconds", type=float, default=600.0)
    args = parser.parse_args()
    sys.exit(drain(args.port, args.timeout_seconds))


if __name__ == "__main__":
    main()
