"""The prefill worker's KV hand-over ledger: a transfer stays pending until the decode side confirms it."""

from __future__ import annotations

from dopd_worker.handover import HandoverLedger


def test_a_sent_transfer_is_pending_until_the_decode_side_acknowledges_it() -> None:
    ledger = HandoverLedger(ack_timeout_seconds=30.0)
    assert ledger.accept("r1")
    assert ledger.pending() == 1
    ledger.settle("r1", sent=True, wants_ack=True, now=100.0)
    # every layer left this process, yet the decode side may not have it: still pending (if a completed
    # send counted as done, a draining prefill pod would exit here and could strand its peer)
    assert ledger.pending() == 1
    assert ledger.acknowledge("r1")
    assert ledger.pending() == 0
    assert ledger.counts() == {
        "kv_transfers_pending": 0,
        "kv_transfers_confirmed": 1,
        "kv_transfers_unconfirmed": 0,
        "kv_transfers_failed": 0,
    }


def test_an_acknowledgement_that_never_comes_is_counted_unconfirmed_after_the_timeout() -> None:
    ledger = HandoverLedger(ack_timeout_seconds=30.0)
    ledger.accept("r1")
    ledger.settle("r1", sent=True, wants_ack=True, now=100.0)
    assert ledger.expire(now=129.9) == []  # not yet overdue
    assert ledger.expire(now=130.0) == ["r1"]
    assert ledger.pending() == 0 and ledger.unconfirmed_total == 1
    assert not ledger.acknowledge("r1")  # a late acknowledgement changes nothing


def test_a_failed_transfer_is_not_pending_the_decode_side_already_failed_the_request() -> None:
    ledger = HandoverLedger(ack_timeout_seconds=30.0)
    ledger.accept("r1")
    ledger.settle("r1", sent=False, wants_ack=True, now=100.0)
    ledger.settle("r1", sent=False, wants_ack=True, now=100.0)  # a failed batch settles twice
    assert ledger.pending() == 0 and ledger.failed_total == 1 and ledger.confirmed_total == 0


def test_a_peer_that_does_not_acknowledge_is_confirmed_by_the_send() -> None:
    ledger = HandoverLedger(ack_timeout_seconds=30.0)
    ledger.accept("r1")
    ledger.settle("r1", sent=True, wants_ack=False, now=100.0)
    assert ledger.pending() == 0 and ledger.confirmed_total == 1


def test_duplicates_are_refused_and_the_drain_timeout_gives_up_on_every_acknowledgement() -> None:
    ledger = HandoverLedger(ack_timeout_seconds=30.0)
    assert ledger.accept("r1") and ledger.accept("r2")
    assert not ledger.accept("r1")
    ledger.settle("r1", sent=True, wants_ack=True, now=100.0)
    assert not ledger.accept("r1")  # still awaiting its acknowledgement
    assert ledger.give_up() == ["r1"]
    assert ledger.pending() == 1  # r2 is still being prefilled: the engine settles it
    assert ledger.unconfirmed_total == 1
