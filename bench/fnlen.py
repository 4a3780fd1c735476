#!/usr/bin/env python3
"""Function lengths in the crate's source: median, p90, max (lines from
`fn` to its closing brace, test modules included), and the largest files.

Usage: bench/fnlen.py [SRC_DIR]
"""
import os
import re
import sys

src = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "src")
lengths, sizes = [], []
fn_re = re.compile(r"^\s*(pub(\([^)]*\))?\s+)?(const\s+)?(async\s+)?(unsafe\s+)?fn\s+(\w+)")
for root, _, names in os.walk(src):
    for n in names:
        if not n.endswith(".rs"):
            continue
        p = os.path.join(root, n)
        lines = open(p, encoding="utf-8").read().split("\n")
        sizes.append((len(lines), os.path.relpath(p, os.path.dirname(src.rstrip("/")))))
        i = 0
        while i < len(lines):
            m = fn_re.match(lines[i])
            if not m:
                i += 1
                continue
            depth, started, j = 0, False, i
            while j < len(lines):
                code = re.sub(r'"(\\.|[^"\\])*"', '""', lines[j].split("//")[0])
                code = re.sub(r"'(\\.|[^'\\])'", "''", code)
                depth += code.count("{") - code.count("}")
                if "{" in code:
                    started = True
                if started and depth <= 0:
                    break
                if not started and code.rstrip().endswith(";"):
                    break
                j += 1
            if started:
                lengths.append((j - i + 1, f"{os.path.relpath(p, os.path.dirname(src.rstrip('/')))}:{i + 1} {m.group(6)}"))
            i += 1
lengths.sort()
vals = [l for l, _ in lengths]
med = vals[len(vals) // 2]
p90 = vals[int(len(vals) * 0.9)]
print(f"functions: {len(vals)}, median {med} lines, p90 {p90}, max {vals[-1]} ({lengths[-1][1]})")
sizes.sort()
for n, p in sizes[-3:][::-1]:
    print(f"file: {p} {n} lines")
