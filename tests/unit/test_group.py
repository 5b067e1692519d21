"""Group commit's bookkeeping (group.py), without a database: who goes out at once, what a
batch holds, and in which order."""

from __future__ import annotations

from aiecs_persistence.group import GroupCommit, Queued
from aiecs_persistence.statements import Statement


def save(user: str, task: str, step: int) -> Queued:
    return Queued((user, task, step), Statement("save", "-"), None)


def test_a_free_writer_takes_a_save_at_once_and_the_rest_queue():
    group = GroupCommit(writers=2, max_batch=10)
    assert group.arrive(save("u", "a", 0))
    assert group.arrive(save("u", "b", 0))
    assert not group.arrive(save("u", "c", 0))  # both writers busy
    assert group.queued == 1


def test_a_batch_is_distinct_keys_in_key_order_and_bounded():
    group = GroupCommit(writers=1, max_batch=3)
    assert group.arrive(save("u", "z", 0))
    queued = [save("u", "c", 1), save("u", "a", 0), save("u", "c", 1), save("u", "b", 0),
              save("u", "d", 0)]
    for item in queued:
        assert not group.arrive(item)
    batch = group.finish([("u", "z", 0)])
    assert [s.key for s in batch] == [("u", "a", 0), ("u", "b", 0), ("u", "c", 1)]
    assert batch[2] is queued[0]  # the first of the two saves of one step goes first
    following = group.finish([s.key for s in batch])
    assert [s.key for s in following] == [("u", "c", 1), ("u", "d", 0)]
    assert following[0] is queued[2]
    assert group.finish([s.key for s in following]) == []
    assert group.arrive(save("u", "e", 0))  # the writer is free again


def test_a_step_being_written_is_never_in_flight_twice():
    group = GroupCommit(writers=2, max_batch=10)
    assert group.arrive(save("u", "a", 0))
    later = save("u", "a", 0)
    assert not group.arrive(later)  # a writer is free, but this step is being written
    assert group.finish([("u", "a", 0)]) == [later]  # the writer takes it next


def test_a_withdrawn_save_is_not_written():
    group = GroupCommit(writers=1, max_batch=10)
    assert group.arrive(save("u", "a", 0))
    gone, kept = save("u", "b", 0), save("u", "c", 0)
    group.arrive(gone)
    group.arrive(kept)
    group.withdraw(gone)
    group.withdraw(gone)  # twice is harmless
    assert group.finish([("u", "a", 0)]) == [kept]


def test_finishing_without_taking_frees_the_writer():
    group = GroupCommit(writers=1, max_batch=10)
    assert group.arrive(save("u", "a", 0))
    waiting = save("u", "b", 0)
    assert not group.arrive(waiting)
    assert group.finish([("u", "a", 0)], take=False) == []
    assert group.queued == 1
    assert group.arrive(save("u", "c", 0))  # the writer is free


def test_on_citus_a_batch_holds_one_users_saves_in_arrival_order_of_users():
    group = GroupCommit(writers=1, max_batch=10)
    group.one_user = True
    assert group.arrive(save("w", "x", 0))
    for item in (save("v", "b", 0), save("u", "a", 0), save("v", "a", 0), save("u", "b", 0)):
        assert not group.arrive(item)
    batch = group.finish([("w", "x", 0)])
    assert [s.key for s in batch] == [("v", "a", 0), ("v", "b", 0)]  # the first queued user's
    batch = group.finish([s.key for s in batch])
    assert [s.key for s in batch] == [("u", "a", 0), ("u", "b", 0)]
    assert group.finish([s.key for s in batch]) == []
