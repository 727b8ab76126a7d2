"""The prefill worker's ledger of KV hand-overs: a transfer is pending from the moment the prefill worker
accepts a prompt until the decode worker acknowledges that every layer arrived (`POST /prefill/ack`).

Why both ends: a completed send only says the bytes left this process (gloo hands them to a socket,
NCCL to a stream). A prefill pod that exits then may still strand its decode peer, which waits for KV
that never comes. So a draining prefill worker exits only when each transfer is either acknowledged by
its receiver, failed (the receiver then fails the request before its first token, and the router
retries it), or past the transfer timeout without an acknowledgement, which is counted
(`dopd_kv_transfers_unconfirmed_total`) and logged as an error, never dropped silently.

Pure (the clock comes in as arguments) so the states are unit-tested; `prefill_server` owns one and
calls it from the event loop only.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class HandoverLedger:
    """Accepted -> (settled) -> awaiting the decode side's acknowledgement -> confirmed | unconfirmed."""

    ack_timeout_seconds: float
    accepted: set[str] = field(default_factory=set)
    awaiting_ack: dict[str, float] = field(default_factory=dict)  # request id -> deadline (monotonic)
    confirmed_total: int = 0
    unconfirmed_total: int = 0
    failed_total: int = 0

    def accept(self, request_id: str) -> bool:
        """False when this request id is already being handed over here (a duplicate)."""
        if request_id in self.accepted or request_id in self.awaiting_ack:
            return False
        self.accepted.add(request_id)
        return True

    def settle(self, request_id: str, sent: bool, wants_ack: bool, now: float) -> None:
        """The prefill job ended: every layer was sent (`sent`), or it failed (the decode side learns it
        from the /prefill stream's error line and expects nothing more)."""
        if request_id not in self.accepted:
            return  # settled twice (a failed batch settles its jobs again): the first one counts
        self.accepted.discard(request_id)
        if not sent:
            self.failed_total += 1
        elif wants_ack:
            self.awaiting_ack[request_id] = now + self.ack_timeout_seconds
        else:
            self.confirmed_total += 1  # a peer that does not acknowledge: the send is all there is

    def acknowledge(self, request_id: str) -> bool:
        """The decode side has every layer. False when nothing awaited it (unknown, or already expired)."""
        if self.awaiting_ack.pop(request_id, None) is None:
            return False
        self.confirmed_total += 1
        return True

    def expire(self, now: float) -> list[str]:
        """Transfers whose acknowledgement is overdue: counted as unconfirmed and forgotten."""
        overdue = [rid for rid, deadline in self.awaiting_ack.items() if deadline <= now]
        for rid in overdue:
            del self.awaiting_ack[rid]
        self.unconfirmed_total += len(overdue)
        return overdue

    def give_up(self) -> list[str]:
        """Drain timeout: stop waiting for every outstanding acknowledgement (counted as unconfirmed)."""
        given_up = list(self.awaiting_ack)
        self.awaiting_ack.clear()
        self.unconfirmed_total += len(given_up)
        return given_up

    def pending(self) -> int:
        """Transfers not yet confirmed by both ends: what a draining prefill worker waits for."""
        return len(self.accepted) + len(self.awaiting_ack)

    def counts(self) -> dict[str, int]:
        return {
            "kv_transfers_pending": self.pending(),
            "kv_transfers_confirmed": self.confirmed_total,
            "kv_transfers_unconfirmed": self.unconfirmed_total,
            "kv_transfers_failed": self.failed_total,
        }
