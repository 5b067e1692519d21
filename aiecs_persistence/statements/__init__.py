"""Every SQL statement the managers run, one concept per module, shared by both managers.

==================  ==========================================================================
``statement.py``    ``Statement``: SQL text, its parameters, how the managers run it
``checks.py``       argument checks (``ValidationError`` naming the field, before any I/O)
``columns.py``      column lists named once; the array literals of many rows in one parameter
``rows.py``         rows read back by name into typed records and upstream's shapes
``saves.py``        a step's save, many in one statement (group commit), the cluster's call
``tasks.py``        a task's own life: start, finish, cancel
``bulk.py``         ``save_task_history_many``: chunks COPYed, or merged when re-saved
``cleanup.py``      retention in bounded batches, and the two ways to tell an inactive task
``partitions.py``   the history's partitions: created ahead, or the one a save found missing
``reads.py``        a task's history, a task, listings with filters and keyset pagination
``report.py``       the failure report over the reporting views
``watching.py``     watchers' catch-ups and registrations
==================  ==========================================================================

Each builder validates its arguments and returns a ``Statement``; the SQL text is fixed, user
input only ever travels as parameters. Where a plain server and a Citus cluster need different
SQL, both forms live beside each other here and ``dialect.py`` picks one at connect.
"""

from .statement import Statement

__all__ = ["Statement"]
