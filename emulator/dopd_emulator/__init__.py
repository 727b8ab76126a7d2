"""The engine emulator: the simulator's engines run in wall-clock time behind a Prometheus /metrics endpoint
in the dopd, vLLM or SGLang format, following the ready pods of a model's Deployments (`dopd emulate`)."""
