"""Prompt families whose answers mostly copy the prompt, checked programmatically.

These are the prompts where prompt-lookup (n-gram) speculative decoding can pay, so the router
needs them in its profiles to learn *when* speculation is worth it, and they are everyday work
for an assistant (edit this code, pull these lines out of that log):

* ``rename`` — rename one variable everywhere in a HumanEval reference solution and return the
  whole code. Correct when the answer's code parses to the same syntax tree as the expected
  rename. A docstring's wording is ignored (it is text, not code), but a dropped docstring, import
  or statement is a change the prompt forbids.
* ``extract`` — copy, in order, every line of a synthetic service log that mentions a given
  component. Correct when the answer's non-empty lines are exactly those lines.

Both are deterministic functions of the item number, so ids and texts are stable across machines.
Ids carry the source group before ``#`` (``rename/042#1``): every prompt made from one HumanEval
problem shares a group, so splits and cross-validation folds keep them together.
"""

from __future__ import annotations

import ast
import builtins
import hashlib
import io
import keyword
import random
import re
import tokenize
from typing import Any

RENAME_TARGETS = ("amount", "element", "current", "candidate", "accumulator", "position", "entry", "buffer")
_FENCE = re.compile(r"^\s*```")


def _stable_int(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:12], 16)


def local_names(source: str, entry_point: str) -> list[str]:
    """Parameters and assigned names of ``entry_point`` (sorted), excluding builtins and one-letter
    loop indices that also occur inside strings: the candidates for a rename."""
    tree = ast.parse(source)
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == entry_point:
            for arg in [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs]:
                names.add(arg.arg)
            for sub in ast.walk(node):
                if isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Store):
                    names.add(sub.id)
    # a name that also appears as an attribute or keyword argument would make "rename it everywhere" ambiguous
    ambiguous = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    ambiguous |= {k.arg for n in ast.walk(tree) if isinstance(n, ast.Call) for k in n.keywords if k.arg}
    return sorted(n for n in names if n not in ambiguous and n != entry_point and not hasattr(builtins, n))


def rename_identifier(source: str, old: str, new: str) -> str:
    """``source`` with every NAME token ``old`` replaced by ``new`` (strings and comments untouched)."""
    tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    out = [tok._replace(string=new) if tok.type == tokenize.NAME and tok.string == old else tok for tok in tokens]
    return tokenize.untokenize(out)


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(body, list)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            body[0] = ast.Pass()
    return tree


def same_code(answer_code: str, expected: str) -> bool:
    """Whether two programs have the same syntax tree, docstring wording ignored; unparsable → ``False``."""
    try:
        got = _strip_docstrings(ast.parse(answer_code))
        want = _strip_docstrings(ast.parse(expected))
    except (SyntaxError, ValueError):
        return False
    return ast.dump(got) == ast.dump(want)


def rename_items(problems: list[dict[str, Any]], per_problem: int = 2) -> list[tuple[str, str, dict[str, Any]]]:
    """``(id, prompt text, reference)`` for up to ``per_problem`` renames of each HumanEval problem.

    ``reference`` holds the expected code and the names, for :func:`score_rename`.
    """
    out = []
    for item in problems:
        source = item["prompt"] + item["canonical_solution"]
        try:
            names = local_names(source, item["entry_point"])
        except SyntaxError:
            continue
        number = item["task_id"].split("/")[-1].zfill(3)
        rng = random.Random(f"rename:{number}")
        rng.shuffle(names)
        for k, old in enumerate(names[:per_problem]):
            new = next(t for t in RENAME_TARGETS[k:] + RENAME_TARGETS if t not in source and t != old)
            new = new if not keyword.iskeyword(new) else new + "_"
            expected = rename_identifier(source, old, new)
            text = (
                f"Rename the variable `{old}` to `{new}` everywhere in the following Python code. Change nothing "
                "else. Return the whole code in one ```python code block.\n\n"
                f"```python\n{source.rstrip()}\n```"
            )
            out.append((f"rename/{number}#{k}", text, {"expected": expected, "old": old, "new": new}))
    return out


_SERVICES = (
    "auth-service", "billing", "disk-monitor", "scheduler", "api-gateway", "cache", "mailer", "search-index",
    "payments", "thumbnailer",
)  # fmt: skip
_LEVELS = ("INFO", "INFO", "INFO", "WARN", "ERROR", "DEBUG")
_EVENTS = (
    "request handled in {n} ms", "retrying connection to {host} (attempt {k})", "queue depth {n}",
    "usage at {p}% on /dev/sda{k}", "user {user} logged in from {host}", "job {job} finished with status {k}",
    "cache miss ratio {p}%", "sent {n} messages", "token refresh for {user}", "slow query took {n} ms",
)  # fmt: skip
_USERS = ("alice", "bob", "carol", "dave", "erin", "frank", "grace")


def log_lines(number: int) -> tuple[list[str], str, list[str]]:
    """A synthetic log for item ``number``: (all lines, the component asked for, the lines that mention it)."""
    rng = random.Random(f"extract:{number}")
    target = rng.choice(_SERVICES)
    count = rng.randint(12, 28)
    hits = set(rng.sample(range(count), rng.randint(2, 6)))
    lines = []
    for i in range(count):
        service = target if i in hits else rng.choice([s for s in _SERVICES if s != target])
        event = rng.choice(_EVENTS).format(
            n=rng.randint(2, 9000),
            k=rng.randint(1, 9),
            p=rng.randint(1, 99),
            host=f"10.0.{rng.randint(0, 9)}.{rng.randint(2, 250)}",
            user=rng.choice(_USERS),
            job=f"{rng.randint(1000, 9999)}",
        )
        stamp = f"2026-0{rng.randint(1, 9)}-{rng.randint(10, 28)} {rng.randint(10, 23)}:{rng.randint(10, 59)}:{i + 10}"
        lines.append(f"{stamp} {rng.choice(_LEVELS)} {service}: {event}")
    return lines, target, [line for line in lines if f" {target}: " in line]


def extract_items(count: int) -> list[tuple[str, str, list[str]]]:
    """``(id, prompt text, expected lines)`` for ``count`` synthetic log-extraction items."""
    out = []
    for number in range(count):
        lines, target, expected = log_lines(number)
        text = (
            f"Copy every line of the log below that mentions `{target}`, exactly as written and in the same "
            "order. Output only those lines, nothing else.\n\n```\n" + "\n".join(lines) + "\n```"
        )
        out.append((f"extract/{number:04d}", text, expected))
    return out


def score_extract(text: str, expected: list[str]) -> bool:
    """Exactly the expected lines, in order; blank lines, code fences and surrounding spaces ignored."""
    got = [line.strip() for line in text.splitlines() if line.strip() and not _FENCE.match(line)]
    return got == [line.strip() for line in expected]
