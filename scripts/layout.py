#!/usr/bin/env python3
"""layout.py — the size limits of issue 14, checked: files under src/ and tools/ of at most
600 lines, functions of at most 100 lines (tests aside). Prints the line count of every file
and each function over the limit; exits 1 when a limit is broken. Functions are found by a
brace-matching scan of top-level definitions (C, no macros that open braces)."""
import re, sys, pathlib

FILE_MAX, FUNC_MAX = 600, 100
root = pathlib.Path(__file__).resolve().parent.parent
bad = 0
for d in ("src", "tools"):
    for p in sorted((root / d).rglob("*")):
        if p.suffix not in (".c", ".h", ".cu", ".cuh"):
            continue
        lines = p.read_text().split("\n")
        n = len(lines) - (lines[-1] == "")
        rel = p.relative_to(root)
        flag = "  OVER" if n > FILE_MAX else ""
        bad += n > FILE_MAX
        print(f"{n:5d} {rel}{flag}")
        depth, start, name = 0, None, None
        for i, line in enumerate(lines):
            code = re.sub(r'"(\\.|[^"\\])*"|\'(\\.|[^\'\\])*\'|//.*', "", line)
            if depth == 0 and start is None:
                m = re.match(r"^[A-Za-z_].*?\b([A-Za-z_]\w*)\s*\(", code)
                if m and not code.rstrip().endswith(";") and "=" not in code.split("(")[0]:
                    name, start = m.group(1), i
            opens, closes = code.count("{"), code.count("}")
            depth += opens - closes
            if start is not None and depth == 0 and (closes or code.rstrip().endswith(";")):
                length = i - start + 1
                if closes and length > FUNC_MAX:
                    print(f"      {rel}:{start + 1} {name}: {length} lines  OVER")
                    bad += 1
                start = None
sys.exit(1 if bad else 0)
