#!/usr/bin/env python3
"""The house rules of the source tree (docs/internals/layout.md), checked:

1. wings: each wing of common/ (and proto/, kernels/ below them) builds as
   its own library whose include path admits only the wings below it. For
   every pair of wings, a file including the other wing's header is compiled
   with the first wing's own flags (from the build's compile_commands.json):
   it must build exactly when the DAG below allows it, and fail naming that
   header otherwise (so an upward include fails the build);
2. includes: every quoted include in a wing names a header of that wing or
   of a wing below it, by name (no paths);
3. no file cycles: no two source files of the libraries or the daemons call
   (or name) each other's functions, directly or around a loop;
4. sizes: no file over 1,000 lines and no function over 120 lines, outside
   tests/ and kernels/;
5. no sleeping retry loops (nanosleep, usleep) in common/ or the daemons:
   allocation failure costs the request, and waiting is the loop's timers or
   the worker's condition variable.

    check_layout.py SOURCE_ROOT BUILD_ROOT
Exit 0 when every rule holds, 1 with every violation listed.
"""
import collections
import glob
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile

# wing -> (folder, library, the wings its include path admits)
WINGS = {
    "base": ("common/base", "pdbase", []),
    "proto": ("proto", "pdproto", ["base"]),
    "kernels": ("kernels", "pdkernels", ["base"]),
    "model": ("common/model", "pdmodel", ["kernels", "base"]),
    "text": ("common/text", "pdtext", ["model", "kernels", "base"]),
    "engine": ("common/engine", "pdengine", ["model", "kernels", "proto", "base"]),
    "kvchan": ("common/kvchan", "pdkvchan", ["proto", "kernels", "base"]),
    "daemon": ("common/daemon", "pddaemon",
               ["kvchan", "engine", "text", "model", "kernels", "proto", "base"]),
}
# one public header per wing, as another wing would include it
PROBE = {"base": "log.h", "proto": "frame.h", "kernels": "quant.h", "model": "model.h",
         "text": "tokenizer.h", "engine": "engine.h", "kvchan": "keyring.h",
         "daemon": "metrics.h"}
PROGRAMS = ["decoded", "prefilld", "common/tools"]
MAX_FILE_LINES = 1000
MAX_FUNC_LINES = 120

problems = []


def closure(w):
    seen, todo = set(), list(WINGS[w][2])
    while todo:
        x = todo.pop()
        if x not in seen:
            seen.add(x)
            todo += WINGS[x][2]
    return seen


def check_dag():
    for w in WINGS:
        if w in closure(w):
            problems.append("wing %s is below itself: the DAG has a cycle" % w)
        if set(WINGS[w][2]) != closure(w):
            problems.append("wing %s: list every wing below it (%s)" %
                            (w, ", ".join(sorted(closure(w)))))


def wing_flags(build):
    """wing -> (compiler, its -I/-D/-std/-include flags), from one of its sources."""
    with open(os.path.join(build, "compile_commands.json")) as f:
        cmds = json.load(f)
    out = {}
    for w, (_, lib, _) in WINGS.items():
        for c in cmds:
            if ("lib%s.a.p" % lib) in c["output"] and c["file"].endswith(".c"):
                args = shlex.split(c["command"])
                keep, i = [], 1
                while i < len(args):
                    a = args[i]
                    if a in ("-I", "-D", "-include", "-isystem"):
                        keep += [a, args[i + 1]]
                        i += 2
                        continue
                    if a.startswith(("-I", "-D", "-std=", "-isystem")):
                        keep.append(a)
                    i += 1
                out[w] = (args[0], keep, c["directory"])
                break
        if w not in out:
            problems.append("no compile command for wing %s (library %s)" % (w, lib))
    return out


def check_include_rule(build):
    flags = wing_flags(build)
    with tempfile.TemporaryDirectory() as tmp:
        for w, (cc, fl, cwd) in flags.items():
            allowed = closure(w) | {w}
            for other, hdr in PROBE.items():
                src = os.path.join(tmp, "probe_%s_%s.c" % (w, other))
                with open(src, "w") as f:
                    f.write('#include "%s"\nint probe_unused;\n' % hdr)
                r = subprocess.run([cc, "-fsyntax-only", "-D_GNU_SOURCE", *fl, src], cwd=cwd,
                                   capture_output=True, text=True)
                if other in allowed and r.returncode != 0:
                    problems.append("wing %s cannot include %s (wing %s, below it):\n%s" %
                                    (w, hdr, other, r.stderr[-2000:]))
                elif other not in allowed:
                    if r.returncode == 0:
                        problems.append("wing %s includes %s of wing %s above or beside it, "
                                        "and it builds: the include path admits it" % (w, hdr, other))
                    elif "%s: No such file" % hdr not in r.stderr:
                        problems.append("wing %s including %s failed, but not for the header "
                                        "itself:\n%s" % (w, hdr, r.stderr[-2000:]))


def headers_of(src, folder):
    return {os.path.basename(p) for p in glob.glob(os.path.join(src, folder, "*.h"))} | \
           {os.path.basename(p) for p in glob.glob(os.path.join(src, folder, "*.cuh"))}


def check_includes_text(src):
    owner = {}
    for w, (folder, _, _) in WINGS.items():
        for h in headers_of(src, folder):
            owner.setdefault(h, w)
    for w, (folder, _, _) in WINGS.items():
        allowed = closure(w) | {w}
        for p in sorted(glob.glob(os.path.join(src, folder, "*.[ch]")) +
                        glob.glob(os.path.join(src, folder, "*.cu*"))):
            for n, line in enumerate(open(p, errors="replace"), 1):
                m = re.match(r'\s*#\s*include\s+"([^"]+)"', line)
                if not m:
                    continue
                inc = m.group(1)
                rel = os.path.relpath(p, src)
                if "/" in inc:
                    problems.append("%s:%d: include by path (%s): name the header" % (rel, n, inc))
                elif inc == "pd_config.h":
                    continue
                elif inc not in owner:
                    problems.append("%s:%d: %s is no wing's header" % (rel, n, inc))
                elif owner[inc] not in allowed:
                    problems.append("%s:%d: wing %s includes %s of wing %s (not below it)" %
                                    (rel, n, w, inc, owner[inc]))


def strip_comments(s):
    s = re.sub(r"/\*.*?\*/", lambda m: " " + "\n" * m.group(0).count("\n"), s, flags=re.S)
    s = re.sub(r"//[^\n]*", " ", s)
    return re.sub(r'"(\\.|[^"\\])*"', '""', s)


def check_cycles(src):
    groups = [[os.path.join(WINGS[w][0], "*.c") for w in WINGS]] + \
             [[os.path.join(p, "*.c")] for p in PROGRAMS]
    for pats in groups:
        files = sorted(f for pat in pats for f in glob.glob(os.path.join(src, pat)))
        text = {f: strip_comments(open(f, errors="replace").read()) for f in files}
        defs = {}
        for f, s in text.items():
            for m in re.finditer(r"^(?!static\b)[A-Za-z_][\w \*]*?\b(\w+)\s*\([^;{]*\)\s*\{", s,
                                 re.M):
                defs.setdefault(m.group(1), f)
            for m in re.finditer(r"^(?!static\b)(?:const )?struct \w+ (\w+)\s*=", s, re.M):
                defs.setdefault(m.group(1), f)
        defs.pop("main", None)
        edges = collections.defaultdict(set)
        for f, s in text.items():
            words = set(re.findall(r"\b\w+\b", s))
            for name, df in defs.items():
                if df != f and name in words:
                    edges[f].add(df)
        # strongly connected components (Tarjan)
        index, low, stack, on, comps, counter = {}, {}, [], set(), [], [0]

        def visit(v):
            index[v] = low[v] = counter[0]
            counter[0] += 1
            stack.append(v)
            on.add(v)
            for w2 in edges[v]:
                if w2 not in index:
                    visit(w2)
                    low[v] = min(low[v], low[w2])
                elif w2 in on:
                    low[v] = min(low[v], index[w2])
            if low[v] == index[v]:
                comp = []
                while True:
                    x = stack.pop()
                    on.discard(x)
                    comp.append(x)
                    if x == v:
                        break
                if len(comp) > 1:
                    comps.append(comp)

        sys.setrecursionlimit(10000)
        for f in files:
            if f not in index:
                visit(f)
        for comp in comps:
            problems.append("file cycle: " + " <-> ".join(sorted(os.path.relpath(c, src)
                                                                  for c in comp)))


def check_sizes(src):
    files = []
    for folder in [WINGS[w][0] for w in WINGS if w != "kernels"] + PROGRAMS:
        files += glob.glob(os.path.join(src, folder, "*.[ch]"))
    for p in sorted(files):
        rel = os.path.relpath(p, src)
        lines = open(p, errors="replace").read().split("\n")
        if len(lines) > MAX_FILE_LINES:
            problems.append("%s: %d lines (at most %d)" % (rel, len(lines), MAX_FILE_LINES))
        # a function: a line at column 0 opening a definition, its body from
        # a "{" alone at column 0 to the next "}" alone at column 0
        i = 0
        while i < len(lines):
            if re.match(r"^[A-Za-z_][^;=]*\(", lines[i]) and not lines[i].startswith("#"):
                j = i
                while j < len(lines) and j < i + 10 and lines[j] != "{":
                    if lines[j].rstrip().endswith(";"):
                        break
                    j += 1
                if j < len(lines) and lines[j] == "{":
                    k = j
                    while k < len(lines) and lines[k] != "}":
                        k += 1
                    if k - i + 1 > MAX_FUNC_LINES:
                        problems.append("%s:%d: a function of %d lines (at most %d): %s" %
                                        (rel, i + 1, k - i + 1, MAX_FUNC_LINES,
                                         lines[i].strip()[:60]))
                    i = k
            i += 1


def check_no_sleeps(src):
    folders = [WINGS[w][0] for w in WINGS] + PROGRAMS
    for folder in folders:
        for p in sorted(glob.glob(os.path.join(src, folder, "*.[ch]"))):
            text = strip_comments(open(p, errors="replace").read())
            for n, line in enumerate(text.split("\n"), 1):
                if re.search(r"\b(nanosleep|usleep|sleep)\s*\(", line):
                    problems.append("%s:%d: a sleep in library or daemon code" %
                                    (os.path.relpath(p, src), n))


def main():
    if len(sys.argv) != 3:
        print(__doc__.strip().split("\n\n")[-2], file=sys.stderr)
        return 2
    src, build = sys.argv[1], sys.argv[2]
    check_dag()
    check_include_rule(build)
    check_includes_text(src)
    check_cycles(src)
    check_sizes(src)
    check_no_sleeps(src)
    for p in problems:
        print("layout: " + p)
    if not problems:
        print("layout: %d wings, their include paths, no file cycles, sizes, no sleeps: all hold" %
              len(WINGS))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
