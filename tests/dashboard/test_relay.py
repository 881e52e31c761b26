"""The relay releases events only over a gap-free run of ids, waiting a bounded time for holes."""

from dashboard.relay import EventRelay


def _events(*ids: int) -> list[dict]:
    return [{"id": event_id} for event_id in ids]


def _relay(gap_wait_s: float) -> EventRelay:
    relay = EventRelay(interval_s=0.05, batch_size=100, gap_wait_s=gap_wait_s)
    relay.watermark = 10
    return relay


def test_a_contiguous_run_is_released_whole():
    assert _relay(1.0)._gap_free_prefix(_events(11, 12, 13), now=0.0) == _events(11, 12, 13)


def test_events_after_a_hole_wait_until_the_hole_fills():
    relay = _relay(1.0)

    assert relay._gap_free_prefix(_events(11, 13), now=0.0) == _events(11)
    relay.watermark = 11
    assert relay._gap_free_prefix(_events(13), now=0.5) == []
    assert relay._gap_free_prefix(_events(12, 13), now=0.6) == _events(12, 13)


def test_a_hole_that_never_fills_is_skipped_after_the_wait():
    relay = _relay(1.0)

    assert relay._gap_free_prefix(_events(12, 13), now=0.0) == []
    assert relay._gap_free_prefix(_events(12, 13), now=0.9) == []
    assert relay._gap_free_prefix(_events(12, 13), now=1.0) == _events(12, 13)


def test_without_a_wait_holes_are_skipped_at_once():
    assert _relay(0.0)._gap_free_prefix(_events(12, 15), now=0.0) == _events(12, 15)
