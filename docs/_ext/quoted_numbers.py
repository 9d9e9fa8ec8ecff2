"""Which measured numbers a documentation page quotes, and whether a result file holds them.

A page names the result files it draws from, in YAML front matter (``results: [a, b]``, the
files ``benchmarks/results/a.json`` ...) or, in the README, an HTML comment
``<!-- results: a, b -->``. Outside code (fenced blocks and inline code), roles and math, a
*measured number* is a decimal (``35.41``), a percentage (``35%``), a ratio (``1.40x``) or a
number with a unit of time, memory or information (``38 s``, ``921 MiB``, ``0.25 nats``).
Settings and thresholds are code (``K = 5000``, ``k-hat > 0.7``); versions too.

A quoted number is held when some number in one of the page's result files, or in a string
there (a block's printed output), rounds to it at the precision it is quoted with; a
percentage also when a fraction does (0.35 for 35%). ``tests/test_docs.py`` fails on any
quoted number that no file of its page holds.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"

_FRONT = re.compile(r"\A---\n(.*?)\n---\n", re.S)
_COMMENT = re.compile(r"<!--\s*results:\s*(.*?)-->", re.S)
_FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.S | re.M)
_ROLE = re.compile(r"\{[\w-]+\}`[^`]*`")
_CODE = re.compile(r"``.+?``|`[^`\n]+`")
_MATH = re.compile(r"\$\$.*?\$\$|\$[^$\n]+\$", re.S)
_LINK_TARGET = re.compile(r"\]\([^)]*\)")
_VERSION = re.compile(r"\b\d+\.\d+\.\d+\b")
_NUMBER = r"(?<![\w.])[-+\u2212]?\d[\d,]*(?:\.\d+)?"
_UNITS = r"(?:ms|s|min|minutes|seconds|h|hours|MiB|GiB|KiB|MB|GB|nats?|bits|steps/s)"
MEASURED = re.compile(
    rf"(?P<pct>{_NUMBER}\s?%)"
    rf"|(?P<ratio>{_NUMBER}x)(?![\w])"
    rf"|(?P<unit>{_NUMBER})\s?{_UNITS}(?![\w/])"
    rf"|(?P<dec>(?<![\w.])[-+\u2212]?\d[\d,]*\.\d+)(?![\w.])"
)


def declared_results(text: str) -> list[str]:
    """The result files a page names (front matter ``results:`` or the README's comment)."""
    front = _FRONT.match(text)
    if front:
        m = re.search(r"^results:\s*\[(.*?)\]", front.group(1), re.M)
        if m:
            return [s.strip().strip("'\"") for s in m.group(1).split(",") if s.strip()]
    comment = _COMMENT.search(text)
    if comment:
        return [s.strip() for s in comment.group(1).split(",") if s.strip()]
    return []


def prose(text: str) -> str:
    """The text with front matter, code, roles, math and link targets blanked (lines kept)."""

    def blank(m: re.Match) -> str:
        return re.sub(r"[^\n]", " ", m.group(0))

    text = _FRONT.sub(blank, text)
    text = _COMMENT.sub(blank, text)
    for pattern in (_FENCE, _ROLE, _CODE, _MATH, _LINK_TARGET, _VERSION):
        text = pattern.sub(blank, text)
    return text


def quoted_numbers(text: str) -> list[tuple[int, str]]:
    """(line, token) of every measured number quoted in the prose of a page."""
    out = []
    for lineno, line in enumerate(prose(text).splitlines(), 1):
        for m in MEASURED.finditer(line):
            kind = m.lastgroup
            out.append((lineno, m.group(kind).strip()))
    return out


def _numbers(value, into: list[float]) -> None:
    if isinstance(value, bool):
        return
    if isinstance(value, (int, float)):
        if math.isfinite(value):
            into.append(float(value))
    elif isinstance(value, str):
        into.extend(float(t.replace(",", "")) for t in re.findall(r"-?\d[\d,]*(?:\.\d+)?", value))
    elif isinstance(value, dict):
        for v in value.values():
            _numbers(v, into)
    elif isinstance(value, list):
        for v in value:
            _numbers(v, into)


def held_values(names: list[str]) -> list[float]:
    """Every number in the named result files (and in their strings)."""
    values: list[float] = []
    for name in names:
        _numbers(json.loads((RESULTS / f"{name}.json").read_text()), values)
    return values


def _parse(token: str) -> tuple[float, int, bool]:
    """(absolute value, decimals, is a percentage) of a quoted token."""
    pct = token.endswith("%")
    core = token.rstrip("%x ").replace(",", "").replace("\u2212", "-").lstrip("+-")
    decimals = len(core.split(".")[1]) if "." in core else 0
    return float(core), decimals, pct


def is_held(token: str, values: list[float]) -> bool:
    number, decimals, pct = _parse(token)
    half = 0.5 * 10.0**-decimals + 1e-9
    candidates = [abs(v) for v in values]
    if pct:
        candidates += [abs(v) * 100 for v in values]
    return any(abs(c - number) <= half for c in candidates)


def unheld_numbers(path: Path) -> list[str]:
    """``path:line: token`` for every quoted number that none of the page's files holds."""
    text = path.read_text()
    names = declared_results(text)
    missing = [n for n in names if not (RESULTS / f"{n}.json").is_file()]
    if missing:
        return [f"{path}: names result files that do not exist: {missing}"]
    values = held_values(names)
    return [
        f"{path}:{line}: {token}"
        for line, token in quoted_numbers(text)
        if not is_held(token, values)
    ]
