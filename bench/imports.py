#!/usr/bin/env python3
"""Import circles in the crate: which source files (and which top-level
modules) reach each other through `crate::` paths.

Reads every `src/**/*.rs` as text, resolves each `crate::a::b::c` path (in
`use` lines and inline) to the longest prefix that names a file, and prints
the strongly connected components of size > 1 of the file graph and of the
module graph (a module is `src/X.rs` or `src/X/`, or `smtp::proto`-style
second level under `smtp`). Test modules (`#[cfg(test)]` to the end of the
file) are left out: test code may use anything.

Usage: bench/imports.py [SRC_DIR]
"""
import os
import re
import sys

src = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "src")
src = os.path.normpath(src)

files = {}
for root, _, names in os.walk(src):
    for n in names:
        if n.endswith(".rs"):
            p = os.path.join(root, n)
            rel = os.path.relpath(p, src)
            parts = rel[:-3].split(os.sep)
            if parts[-1] in ("mod", "lib", "main"):
                parts = parts[:-1]
            files[tuple(parts)] = p


def strip_tests(text):
    i = text.find("#[cfg(test)]")
    return text if i < 0 else text[:i]


def strip_comments(text):
    return "\n".join(l for l in text.split("\n") if not l.lstrip().startswith("//"))


def expand_use(stmt):
    """`crate::a::{b, c::{d, e}}` -> ['crate::a::b', 'crate::a::c::d', ...]"""
    stmt = re.sub(r"\s+", "", stmt)
    def rec(prefix, s):
        m = re.match(r"^([\w:]*?)::\{(.*)\}$", s)
        if not m:
            return [prefix + s]
        head, inner = m.group(1), m.group(2)
        out, depth, cur = [], 0, ""
        for ch in inner:
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
            if ch == "," and depth == 0:
                out.append(cur)
                cur = ""
            else:
                cur += ch
        if cur:
            out.append(cur)
        res = []
        for item in out:
            res += rec(prefix + head + "::", item)
        return res
    return rec("", stmt)


def resolve(path):
    parts = path.split("::")
    if parts[0] != "crate":
        return None
    parts = parts[1:]
    for k in range(len(parts), 0, -1):
        if tuple(parts[:k]) in files:
            return tuple(parts[:k])
    return None


edges = {f: set() for f in files}
for f, p in files.items():
    text = strip_comments(strip_tests(open(p, encoding="utf-8").read()))
    paths = []
    for m in re.finditer(r"\buse\s+(crate::[^;]+);", text):
        paths += expand_use(m.group(1))
    for m in re.finditer(r"\bcrate(::\w+)+", text):
        paths.append(m.group(0))
    for path in paths:
        t = resolve(path.split("::{")[0] if "{" in path else path)
        if t and t != f and t != ():
            edges[f].add(t)


def sccs(graph):
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(10000)
    def visit(v):
        index[v] = low[v] = counter[0]; counter[0] += 1
        stack.append(v); on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w); low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop(); on.discard(w); comp.append(w)
                if w == v:
                    break
            out.append(comp)
    for v in graph:
        if v not in index:
            visit(v)
    return [c for c in out if len(c) > 1]


def module_of(f):
    if not f:
        return "lib"
    if f[0] == "smtp" and len(f) > 1:
        return "smtp::" + f[1]
    return f[0]


mod_edges = {}
for f, ts in edges.items():
    a = module_of(f)
    mod_edges.setdefault(a, set())
    for t in ts:
        b = module_of(t)
        if a != b and b != "lib":
            mod_edges[a].add(b)

fc = sccs(edges)
mc = sccs(mod_edges)
print(f"files: {len(files)}, file-level import circles: {len(fc)}, files in them: {sum(len(c) for c in fc)}")
for c in fc:
    print("  circle:", ", ".join(sorted("::".join(x) or "lib" for x in c)))
print(f"modules: {len(mod_edges)}, module-level import circles: {len(mc)}, modules in them: {sum(len(c) for c in mc)}")
for c in mc:
    print("  circle:", ", ".join(sorted(c)))
