#!/usr/bin/env python3
"""The house rules of issue #8, checked on every CI run.

- no source file over 800 lines (outside tests), unless its first lines carry a
  `// long-file: <why>` comment;
- no function over 120 lines (outside tests: `tests/` folders and `#[cfg(test)]` modules),
  unless a `// long-fn: <why>` comment stands right above it (above its doc comments and
  attributes is fine);
- no dependency cycle among the top-level modules of the multiwan crate (`crate::x`
  references), and none against the intended order written below (and in the README's
  layout section).

Why a script and not clippy: clippy's `too_many_lines` counts differently (it skips blank
and comment lines) and cannot express the per-function escape with a reason, nor module
cycles. Rust is tokenised just enough to find braces: strings, raw strings, chars and
comments are skipped, lifetimes are told from char literals.
"""

import argparse
import os
import re
import sys

MAX_FILE = 800
MAX_FN = 120

# The intended dependency order, lowest first: a module may use only modules before it.
# (The README's "Layout" section says the same.)
ORDER = [
    "logging",
    "status",
    "api",
    "config",
    "plan",
    "state",
    "preflight",
    "kernel",
    "render",
    "explain",
    "probe",
    "health",
    "control",
    "daemon",
    "cli",
]

CHAR_RE = re.compile(r"'(?:\\[nrt0\\'\"]|\\x[0-9a-fA-F]{2}|\\u\{[0-9a-fA-F]+\}|[^\\'\n])'")
RAW_RE = re.compile(r'b?r(#*)"')


def strip(src):
    """Returns the source with comments, strings and chars blanked (newlines kept)."""
    out = []
    i, n = 0, len(src)
    while i < n:
        c = src[i]
        if src.startswith("//", i):
            j = src.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif src.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if src.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif src.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append(re.sub(r"[^\n]", " ", src[i:j]))
            i = j
        elif (c in "rb") and RAW_RE.match(src, i) and (i == 0 or not (src[i - 1].isalnum() or src[i - 1] == "_")):
            m = RAW_RE.match(src, i)
            end = '"' + m.group(1)
            j = src.find(end, m.end())
            j = n if j < 0 else j + len(end)
            out.append(re.sub(r"[^\n]", " ", src[i:j]))
            i = j
        elif c == '"':
            j = i + 1
            while j < n and src[j] != '"':
                j += 2 if src[j] == "\\" else 1
            j += 1
            out.append(re.sub(r"[^\n]", " ", src[i:j]))
            i = j
        elif c == "'":
            m = CHAR_RE.match(src, i)
            if m:
                out.append(" " * (m.end() - i))
                i = m.end()
            else:
                out.append(c)  # a lifetime
                i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def matching_brace(text, open_idx):
    depth = 0
    for j in range(open_idx, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return j
    return len(text) - 1


def test_ranges(text):
    """Character ranges of `#[cfg(test)] mod x { … }` blocks."""
    ranges = []
    for m in re.finditer(r"#\[cfg\(test\)\]\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+\w+\s*\{", text):
        open_idx = m.end() - 1
        ranges.append((m.start(), matching_brace(text, open_idx)))
    return ranges


def has_reason(lines, line_no, tag):
    """Whether a `// <tag>:` comment stands above line `line_no` (1-based): among the
    comments, doc comments and attributes right above the item."""
    k = line_no - 2
    while k >= 0:
        s = lines[k].strip()
        if f"// {tag}:" in s:
            return True
        if s.startswith("//") or s.startswith("#[") or s.endswith(")]") or s.endswith(","):
            k -= 1  # a comment, a doc comment, an attribute or the inside of one
            continue
        return False
    return False


def check_file(path, rel, problems):
    src = open(path, encoding="utf-8").read()
    lines = src.split("\n")
    if len(lines) - 1 > MAX_FILE and not any("// long-file:" in l for l in lines[:5]):
        problems.append(f"{rel}: {len(lines) - 1} lines (max {MAX_FILE}; split it by concern)")
    text = strip(src)
    tests = test_ranges(text)
    for m in re.finditer(r"\bfn\s+([A-Za-z_][A-Za-z0-9_]*)", text):
        start = m.start()
        if any(a <= start <= b for a, b in tests):
            continue
        # The body: the first `{` at paren/bracket depth 0 before a `;`.
        depth, j = 0, m.end()
        body = None
        while j < len(text):
            ch = text[j]
            if ch in "([<":
                depth += 1 if ch != "<" else 0
            elif ch in ")]":
                depth -= 1
            elif ch == ";" and depth == 0:
                break
            elif ch == "{" and depth == 0:
                body = j
                break
            j += 1
        if body is None:
            continue
        end = matching_brace(text, body)
        first = text.count("\n", 0, start) + 1
        last = text.count("\n", 0, end) + 1
        length = last - first + 1
        if length > MAX_FN and not has_reason(lines, first, "long-fn"):
            problems.append(
                f"{rel}:{first}: fn {m.group(1)} is {length} lines (max {MAX_FN}; "
                "cut it, or say why above it with `// long-fn: <why>`)"
            )


def module_deps(src_dir):
    deps = {}
    for entry in sorted(os.listdir(src_dir)):
        p = os.path.join(src_dir, entry)
        name = entry[:-3] if entry.endswith(".rs") else entry
        if name in ("lib", "main"):
            continue
        files = []
        if os.path.isdir(p):
            for root, _, fs in os.walk(p):
                files += [os.path.join(root, f) for f in fs if f.endswith(".rs")]
        elif entry.endswith(".rs"):
            files = [p]
        used = set()
        for f in files:
            text = strip(open(f, encoding="utf-8").read())
            for t in test_ranges(text)[::-1]:
                text = text[: t[0]] + text[t[1] + 1 :]
            used |= set(re.findall(r"\bcrate::([a-z_][a-z0-9_]*)", text))
            for group in re.findall(r"\bcrate::\{([^}]*)\}", text):
                used |= set(re.findall(r"(?:^|,)\s*([a-z_][a-z0-9_]*)", group))
        used.discard(name)
        deps[name] = used
    return deps


def find_cycle(deps):
    state = {}
    stack = []

    def visit(v):
        state[v] = 1
        stack.append(v)
        for w in sorted(deps.get(v, ())):
            if w not in deps:
                continue
            if state.get(w) == 1:
                return stack[stack.index(w):] + [w]
            if w not in state:
                c = visit(w)
                if c:
                    return c
        stack.pop()
        state[v] = 2
        return None

    for v in sorted(deps):
        if v not in state:
            c = visit(v)
            if c:
                return c
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", default=os.path.join(os.path.dirname(__file__), ".."))
    args = ap.parse_args()
    root = os.path.abspath(args.root)
    problems = []
    for base in ("crates", "bench"):
        for dirpath, dirnames, files in os.walk(os.path.join(root, base)):
            dirnames[:] = [d for d in dirnames if d not in ("tests", "target")]
            for f in files:
                if f.endswith(".rs"):
                    p = os.path.join(dirpath, f)
                    check_file(p, os.path.relpath(p, root), problems)
    src = os.path.join(root, "crates", "multiwan", "src")
    deps = module_deps(src)
    cycle = find_cycle(deps)
    if cycle:
        problems.append("module cycle: " + " -> ".join(cycle))
    rank = {m: i for i, m in enumerate(ORDER)}
    for m, used in sorted(deps.items()):
        if m not in rank:
            problems.append(f"module {m} is not in the intended order (scripts/house-rules.py ORDER)")
            continue
        for u in sorted(used):
            if u in rank and rank[u] > rank[m]:
                problems.append(f"module {m} uses {u}, which comes after it in the intended order")
    for p in problems:
        print(p)
    print(f"house rules: {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
