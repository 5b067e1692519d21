"""Group commit's bookkeeping (group.py), without a database: who goes out at once, what a
batch holds, and in which order."""

from __future__ import annotations

from aiecs_persistence.group import Arrival, GroupCommit
from aiecs_persistence.queued_sync import Queued
from aiecs_persistence.statements import Statement


def save(user: str, task: str, step: int) -> Queued:
    return Queued((user, task, step), Statement("save", "-"), None)


def test_an_idle_manager_writes_a_save_at_once_and_a_free_writer_leads_the_next():
    group = GroupCommit(writers=2, max_batch=10)
    assert group.arrive(save("u", "a", 0)) is Arrival.ALONE  # every writer free
    second, third = save("u", "b", 0), save("u", "c", 0)
    assert group.arrive(second) is Arrival.LEAD  # one free beside a busy one: it leads
    assert group.arrive(third) is Arrival.QUEUED  # both writers busy
    assert group.queued == 2
    # The leader runs after the arrivals of its loop turn: it takes them in one batch (its
    # even part of the three outstanding, rounded up, is two).
    assert group.lead() == [second, third]
    assert group.queued == 0


def test_a_leader_that_finds_the_queue_taken_goes_free():
    group = GroupCommit(writers=2, max_batch=10)
    assert group.arrive(save("u", "a", 0)) is Arrival.ALONE
    led = save("u", "b", 0)
    assert group.arrive(led) is Arrival.LEAD
    assert group.finish([("u", "a", 0)]) == [led]  # the other writer took it first
    assert group.lead() == []
    assert group.finish([("u", "b", 0)]) == []
    assert group.arrive(save("u", "c", 0)) is Arrival.ALONE  # both free again


def test_busy_writers_split_the_callers_evenly():
    """A writer that finishes takes its even part of the saves outstanding (queued, or being
    written by the other writer) and leaves the rest queued for the other: under load each
    carries half of the callers, instead of one carrying nearly all of them."""
    group = GroupCommit(writers=2, max_batch=100)
    assert group.arrive(save("u", "lone", 0)) is Arrival.ALONE
    many = [save("u", f"t{i:02}", 0) for i in range(63)]
    assert group.arrive(many[0]) is Arrival.LEAD
    for item in many[1:]:
        assert group.arrive(item) is Arrival.QUEUED
    first = group.lead()  # 64 outstanding (63 queued, 1 being written), 2 writers
    assert first == many[:32]
    second = group.finish([("u", "lone", 0)])  # 31 queued, 32 being written
    assert second == many[32:]
    assert group.queued == 0
    # The callers of the first batch come back while the second is written: the first
    # writer takes them all (32 outstanding beside the 31 in flight, 2 writers: 32 each).
    again = [save("u", f"t{i:02}", 1) for i in range(32)]
    for item in again:
        assert group.arrive(item) is Arrival.QUEUED
    assert group.finish([s.key for s in first]) == again


def test_a_batch_is_distinct_keys_in_key_order_and_bounded():
    group = GroupCommit(writers=1, max_batch=3)
    assert group.arrive(save("u", "z", 0)) is Arrival.ALONE
    queued = [save("u", "c", 1), save("u", "a", 0), save("u", "c", 1), save("u", "b", 0),
              save("u", "d", 0)]
    for item in queued:
        assert group.arrive(item) is Arrival.QUEUED
    batch = group.finish([("u", "z", 0)])
    assert [s.key for s in batch] == [("u", "a", 0), ("u", "b", 0), ("u", "c", 1)]
    assert batch[2] is queued[0]  # the first of the two saves of one step goes first
    following = group.finish([s.key for s in batch])
    assert [s.key for s in following] == [("u", "c", 1), ("u", "d", 0)]
    assert following[0] is queued[2]
    assert group.finish([s.key for s in following]) == []
    assert group.arrive(save("u", "e", 0)) is Arrival.ALONE  # the writer is free again


def test_a_step_being_written_is_never_in_flight_twice():
    group = GroupCommit(writers=2, max_batch=10)
    assert group.arrive(save("u", "a", 0)) is Arrival.ALONE
    later = save("u", "a", 0)
    assert group.arrive(later) is Arrival.QUEUED  # a writer is free, but this step is being written
    assert group.finish([("u", "a", 0)]) == [later]  # the writer takes it next


def test_a_withdrawn_save_is_not_written():
    group = GroupCommit(writers=1, max_batch=10)
    assert group.arrive(save("u", "a", 0)) is Arrival.ALONE
    gone, kept = save("u", "b", 0), save("u", "c", 0)
    group.arrive(gone)
    group.arrive(kept)
    group.withdraw(gone)
    group.withdraw(gone)  # twice is harmless
    assert group.finish([("u", "a", 0)]) == [kept]


def test_finishing_without_taking_frees_the_writer():
    group = GroupCommit(writers=1, max_batch=10)
    assert group.arrive(save("u", "a", 0)) is Arrival.ALONE
    waiting = save("u", "b", 0)
    assert group.arrive(waiting) is Arrival.QUEUED
    assert group.finish([("u", "a", 0)], take=False) == []
    assert group.queued == 1
    assert group.arrive(save("u", "c", 0)) is Arrival.ALONE  # the writer is free


def test_on_citus_a_batch_holds_one_users_saves_in_arrival_order_of_users():
    group = GroupCommit(writers=1, max_batch=10, one_user=lambda: True)
    assert group.arrive(save("w", "x", 0)) is Arrival.ALONE
    for item in (save("v", "b", 0), save("u", "a", 0), save("v", "a", 0), save("u", "b", 0)):
        assert group.arrive(item) is Arrival.QUEUED
    batch = group.finish([("w", "x", 0)])
    assert [s.key for s in batch] == [("v", "a", 0), ("v", "b", 0)]  # the first queued user's
    batch = group.finish([s.key for s in batch])
    assert [s.key for s in batch] == [("u", "a", 0), ("u", "b", 0)]
    assert group.finish([s.key for s in batch]) == []
