"""The operator's controller: Kopf handlers, the children it owns, the actuator, status and Events.

I/O only; every decision is made by `dopd_operator.tick`."""
