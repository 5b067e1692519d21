#!/usr/bin/env python3
"""Generate the blocking modules from their async sources.

=======================================  ==================================================
async source                             generated blocking twin
=======================================  ==================================================
``aiecs_persistence/manager.py``         ``aiecs_persistence/sync.py``
``aiecs_persistence/listen.py``          ``aiecs_persistence/listen_sync.py``
``aiecs_persistence/queued.py``          ``aiecs_persistence/queued_sync.py``
=======================================  ==================================================

The async module is the source and real code: where the two I/O styles differ, it says so with
a live branch, which mypy and ruff check on both sides (the async side in the source, the
blocking side in the generated module)::

    if True:  # ASYNC
        await asyncio.sleep(delay)
    else:
        self._stop.wait(delay)

The generator reads the source's syntax tree to find each such ``if`` (its test the constant
``True``, its line marked ``# ASYNC``) and puts its ``else`` body in its place, dedented (no
``else``: nothing). Then, line by line so that comments and layout survive, ``async``/``await``
go and asyncio's pieces become threading's and time's, the async classes of psycopg and
psycopg_pool their blocking twins, and the imports are sorted by ruff.

    python tools/async_to_sync.py            # write the blocking modules
    python tools/async_to_sync.py --check    # exit 1 when one is stale (CI runs this)
"""

from __future__ import annotations

import argparse
import ast
import difflib
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "aiecs_persistence"


@dataclass(frozen=True)
class Twin:
    source: Path
    target: Path
    #: The generated module's docstring.
    docstring: str


_SYNC_DOC = '''"""``SyncDatabaseManager``: the blocking twin of ``DatabaseManager``.

Same methods, same arguments, same results, same statements (``statements/``); only the I/O
style differs. Thread-safe: each call checks its own connection out of the pool.
"""
'''
_LISTEN_DOC = '''"""The blocking manager's LISTEN connection (a daemon thread) and its watchers'
waits: the twins of ``listen.py``'s (``watch.py`` explains the wake-up)."""
'''
_QUEUED_DOC = '''"""A save queued by the blocking manager for group commit (its thread waits on an
event): the twin of ``queued.py``'s (``group.py`` explains group commit)."""
'''

TWINS: tuple[Twin, ...] = (
    Twin(PACKAGE / "manager.py", PACKAGE / "sync.py", _SYNC_DOC),
    Twin(PACKAGE / "listen.py", PACKAGE / "listen_sync.py", _LISTEN_DOC),
    Twin(PACKAGE / "queued.py", PACKAGE / "queued_sync.py", _QUEUED_DOC),
)
#: Generated from the first twin by default (``--source``/``--target`` pick one pair).
SOURCE, TARGET = TWINS[0].source, TWINS[0].target


def header(source: Path) -> str:
    return (
        f"# WARNING: generated from {source.name} by tools/async_to_sync.py: do not edit this "
        "file.\n"
        f"# Change {source.name} and run `python tools/async_to_sync.py`.\n"
    )


#: (pattern, replacement), applied in order to every kept line.
RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(pattern), replacement)
    for pattern, replacement in [
        (r"\basync (def|with|for)\b", r"\1"),
        (r"\bawait ", ""),
        (r"\basyncio\.to_thread\(([\w.]+)\)", r"\1()"),
        (r"\basyncio\.to_thread\(([\w.]+), ", r"\1("),
        (r"\basyncio\.Lock\(\)", "threading.Lock()"),
        (r"\basyncio\.Event\(\)", "threading.Event()"),
        (r"\basyncio\.sleep\(", "time.sleep("),
        (r"\bAsync(Listener|Waiter|Iterator|Queued)\b", r"\1"),
        (r"\bAsyncConnectionPool\b", "ConnectionPool"),
        (r"\bAsyncConnection\b", "Connection"),
        (r" \| AsyncIterable\[(\w+)\]", ""),
        (r"\bAwaitable\[(\w+)\]", r"\1"),
        (r"\basynccontextmanager\b", "contextmanager"),
        (r"\b__aenter__\b", "__enter__"),
        (r"\b__aexit__\b", "__exit__"),
        (r"\bDatabaseManager\b", "SyncDatabaseManager"),
        (r"\bfrom \.listen import\b", "from .listen_sync import"),
        (r"\bfrom \.queued import\b", "from .queued_sync import"),
        (r'"aiecs-async"', '"aiecs-sync"'),
        (r"\bAsync persistence\b", "Blocking persistence"),
        (r"\bthe async manager\b", "the blocking manager"),
    ]
]

_ASYNC_MARK = re.compile(r"^\s*if .*#\s*ASYNC\s*$")
_ELSE = re.compile(r"^\s*else:\s*(#.*)?$")


class GenerateError(Exception):
    pass


def _branches(source: str) -> list[ast.If]:
    """Every ``if True:  # ASYNC`` of ``source``, outermost first; anything that looks like one
    but is not (an ``elif``, another test) is refused."""
    lines = source.splitlines()
    found: list[ast.If] = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.If):
            continue
        marked = _ASYNC_MARK.match(lines[node.lineno - 1]) is not None
        constant = isinstance(node.test, ast.Constant) and node.test.value is True
        if marked != constant:
            raise GenerateError(f"line {node.lineno}: an async branch is written "
                                "'if True:  # ASYNC'")
        if not marked:
            continue
        if len(node.orelse) == 1 and isinstance(node.orelse[0], ast.If) and not _ELSE.match(
                lines[node.orelse[0].lineno - 2]):
            raise GenerateError(f"line {node.lineno}: an async branch takes 'else:', not 'elif'")
        found.append(node)
    return found


def _dedent(block: list[str], by: int) -> list[str]:
    out = []
    for line in block:
        if line.strip() and not line[:by].isspace():
            raise GenerateError(f"cannot dedent {line!r}")
        out.append(line[by:] if line.strip() else "")
    return out


def resolve_branches(source: str) -> str:
    """``source`` with each ``if True:  # ASYNC`` replaced by its ``else`` body, dedented."""
    lines = source.splitlines()
    # Innermost last in the walk's order is not guaranteed: replace from the bottom up, and
    # skip a branch inside one already replaced.
    done: list[tuple[int, int]] = []
    for node in sorted(_branches(source), key=lambda n: n.lineno, reverse=True):
        start, end = node.lineno, node.end_lineno or node.lineno
        if any(s <= start and end <= e for s, e in done):
            continue
        if any(start <= s and e <= end for s, e in done):
            raise GenerateError(f"line {start}: async branches may not nest")
        indent = len(lines[start - 1]) - len(lines[start - 1].lstrip())
        replacement: list[str] = []
        if node.orelse:
            first = node.orelse[0].lineno
            # The else body starts on the line after ``else:`` (comments included).
            else_line = max(i for i in range(start, first) if _ELSE.match(lines[i - 1]))
            body = lines[else_line:end]
            inner = min(len(x) - len(x.lstrip()) for x in body if x.strip())
            replacement = [" " * indent + x if x else x for x in _dedent(body, inner)]
        lines[start - 1:end] = replacement
        done.append((start, end))
    return "\n".join(lines) + "\n"


def convert(source: str) -> str:
    """The blocking module's body for the async ``source`` (before import sorting)."""
    body = resolve_branches(_skip_docstring(source))
    out = []
    for line in body.splitlines():
        for pattern, replacement in RULES:
            line = pattern.sub(replacement, line)
        out.append(line)
    return "\n".join(out) + "\n"


def _skip_docstring(source: str) -> str:
    """``source`` without its module docstring (the blocking module has its own)."""
    match = re.match(r'\s*"""(.*?)"""\n', source, re.S)
    if match is None:
        raise GenerateError("an async source must start with its module docstring")
    return source[match.end():]


def tidy(code: str, filename: Path) -> str:
    """``code`` as ``ruff check`` wants it: imports sorted, nested ``with`` blocks (which were
    ``async with`` and ``with`` in the source) merged, a loop that only yields turned into
    ``yield from``."""
    done = subprocess.run(  # noqa: S603 - our own interpreter running ruff
        [sys.executable, "-m", "ruff", "check", "--fix-only", "--unsafe-fixes",
         "--select", "I,SIM117,UP028", "--quiet", "--stdin-filename", str(filename), "-"],
        input=code, capture_output=True, text=True, check=False, cwd=ROOT,
    )
    if done.returncode != 0:
        raise GenerateError(f"ruff could not sort the imports: {done.stderr.strip()}")
    return done.stdout


def generate(source: Path, target: Path, docstring: str) -> str:
    body = convert(source.read_text(encoding="utf-8"))
    return tidy(header(source) + docstring + body, target)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="do not write; exit 1 when a target is stale")
    parser.add_argument("--source", type=Path, help="one async source (default: all)")
    parser.add_argument("--target", type=Path, help="its blocking module")
    args = parser.parse_args(argv)
    twins = list(TWINS)
    if args.source is not None or args.target is not None:
        if args.source is None or args.target is None:
            parser.error("--source and --target go together")
        known = {t.source.name: t.docstring for t in TWINS}
        twins = [Twin(args.source, args.target, known.get(args.source.name, TWINS[0].docstring))]
    stale = 0
    for twin in twins:
        try:
            generated = generate(twin.source, twin.target, twin.docstring)
        except (GenerateError, SyntaxError) as exc:
            print(f"async_to_sync: {twin.source}: {exc}", file=sys.stderr)
            return 2
        current = twin.target.read_text(encoding="utf-8") if twin.target.exists() else ""
        if generated == current:
            continue
        if args.check:
            diff = difflib.unified_diff(current.splitlines(True), generated.splitlines(True),
                                        str(twin.target), "generated")
            sys.stderr.writelines(diff)
            print(f"async_to_sync: {twin.target} is stale; run `python tools/async_to_sync.py`",
                  file=sys.stderr)
            stale += 1
        else:
            twin.target.write_text(generated, encoding="utf-8")
            print(f"async_to_sync: wrote {twin.target}")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
