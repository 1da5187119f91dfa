#!/usr/bin/env python3
"""Checks that the modules of a crate form layers: no cycle between its top-level modules.

    python3 ci/module-cycles.py CRATE_SRC_DIR...

For each directory given (a crate's `src/`), the top-level modules are the `mod` items of its
root (`lib.rs`, else `main.rs`): `name.rs`, or `name/mod.rs` with every file below `name/`.
Module `a` uses module `b` when, outside comments, string literals and `#[cfg(test)]` items,
a file of `a` names a path that starts at the crate root with `b`: `crate::b::...`,
`use crate::{b::..., ...}`, a `super::` path that climbs to the root, or a name the root
imports from `b` (`crate::Runtime` when the root says `pub use runtime::Runtime`).

It prints each crate's graph (`module -> modules it uses`) and its cycles (strongly connected
components of more than one module), as `cycles: []` when there are none. The exit status is
1 when a crate has a cycle, 2 on a usage error, else 0.

It reads names, not types: a method called on a value whose type is defined elsewhere is not
seen as a use of the module that defines the method (an inherent `impl` block may live in a
higher module than its type: call its methods from that module and above only). Nor does it
follow `super::` through inline modules other than test modules.
"""

import os
import re
import sys

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
CFG_TEST = re.compile(r"#\s*\[\s*cfg\s*\(\s*test\s*\)\s*\]")


def strip_comments_and_literals(src):
    """The source with comments removed and string and char literals emptied (`""`, `' '`)."""
    out = []
    i, n = 0, len(src)
    while i < n:
        c = src[i]
        if src.startswith("//", i):
            j = src.find("\n", i)
            i = n if j < 0 else j
        elif src.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if src.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif src.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
            out.append(" ")
        elif re.match(r'b?r#*"', src[i:i + 260]) and (i == 0 or not re.match(r"[A-Za-z0-9_]", src[i - 1])):
            m = re.match(r'b?r(#*)"', src[i:])
            end = src.find('"' + m.group(1), i + m.end())
            i = n if end < 0 else end + 1 + len(m.group(1))
            out.append('""')
        elif c == '"' or (c == "b" and src.startswith('b"', i) and (i == 0 or not re.match(r"[A-Za-z0-9_]", src[i - 1]))):
            i += 2 if c == "b" else 1
            while i < n and src[i] != '"':
                i += 2 if src[i] == "\\" else 1
            i += 1
            out.append('""')
        elif c == "'":
            # A char literal ('x', '\n', '\u{1F600}', b'x'), else a lifetime or a label.
            m = re.match(r"'(\\(u\{[0-9A-Fa-f]*\}|x[0-9A-Fa-f]{2}|.)|[^\\'])'", src[i:i + 12], re.S)
            if m:
                i += m.end()
                out.append("' '")
            else:
                out.append(c)
                i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def item_end(src, i):
    """The end of the item that starts at `i`: after its `;`, or after its body's `}`."""
    depth = 0
    while i < len(src):
        c = src[i]
        if c in "([":
            depth += 1
        elif c in ")]":
            depth -= 1
        elif c == ";" and depth == 0:
            return i + 1
        elif c == "{" and depth == 0:
            braces = 0
            while i < len(src):
                if src[i] == "{":
                    braces += 1
                elif src[i] == "}":
                    braces -= 1
                    if braces == 0:
                        return i + 1
                i += 1
            return i
        i += 1
    return i


def strip_test_items(src):
    """The source without the items under `#[cfg(test)]` (a test module, a test helper)."""
    while True:
        m = CFG_TEST.search(src)
        if not m:
            return src
        src = src[:m.start()] + src[item_end(src, m.end()):]


def code_of(path):
    """The code of a file that counts: no comments, literals or test items."""
    with open(path, encoding="utf-8") as f:
        return strip_test_items(strip_comments_and_literals(f.read()))


def split_top(group):
    """The items of a use group's inside (`a::b, c::{d, e}`), split at its top-level commas."""
    items, depth, start = [], 0, 0
    for i, c in enumerate(group):
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
        elif c == "," and depth == 0:
            items.append(group[start:i])
            start = i + 1
    items.append(group[start:])
    return [t.strip() for t in items if t.strip()]


def group_at(src, i):
    """The inside of the brace group that opens at `src[i]`."""
    depth = 0
    for j in range(i, len(src)):
        if src[j] == "{":
            depth += 1
        elif src[j] == "}":
            depth -= 1
            if depth == 0:
                return src[i + 1:j]
    return src[i + 1:]


def first_segments(src, i):
    """The first segment of each path that starts at `src[i]`: a name, or a use group."""
    while i < len(src) and src[i].isspace():
        i += 1
    if i < len(src) and src[i] == "{":
        return [re.match(IDENT, t).group(0) for t in split_top(group_at(src, i)) if re.match(IDENT, t)]
    m = re.compile(IDENT).match(src, i)
    return [m.group(0)] if m else []


def root_paths(code, depth):
    """The first segment of every path of `code` that starts at the crate root. `depth` is how
    many modules deep the file is (1 for `name.rs` and `name/mod.rs`, 2 for `name/x.rs`)."""
    found = []
    for m in re.finditer(r"(?<![A-Za-z0-9_])(\$?crate\s*::|(?:super\s*::\s*)+)", code):
        head = m.group(1)
        if "crate" not in head and head.count("super") < depth:
            continue  # a path inside the same top-level module
        found += first_segments(code, m.end())
    return found


def use_trees(code):
    """`(name, first segment)` for every name a `use` item of `code` brings into scope."""
    names = []

    def walk(tree, prefix):
        tree = tree.strip()
        if tree.endswith("}") and "{" in tree:
            head, inner = tree[:tree.index("{")], tree[tree.index("{") + 1:-1]
            for t in split_top(inner):
                walk(t, prefix + [s.strip() for s in head.split("::") if s.strip()])
            return
        m = re.match(r"(.*?)\s+as\s+(" + IDENT + r")$", tree, re.S)
        path, alias = (m.group(1), m.group(2)) if m else (tree, None)
        segs = prefix + [s.strip() for s in path.split("::") if s.strip()]
        if segs and segs[-1] == "self":
            segs.pop()
        if segs:
            names.append((alias or segs[-1], segs[0]))

    for m in re.finditer(r"(?<![A-Za-z0-9_])use\s+([^;]*);", code):
        tree = re.sub(r"^(crate|self)\s*::\s*", "", m.group(1).strip())
        walk(tree, [])
    return names


def crate_modules(src_dir):
    """`{module: [files]}` and `{name imported at the root: module}` of one crate."""
    root = next((os.path.join(src_dir, r) for r in ("lib.rs", "main.rs") if os.path.isfile(os.path.join(src_dir, r))), None)
    if root is None:
        raise SystemExit(f"module-cycles: {src_dir}: no lib.rs or main.rs")
    root_code = code_of(root)
    modules = {}
    for name in re.findall(r"(?<![A-Za-z0-9_])mod\s+(" + IDENT + r")\s*;", root_code):
        flat, nested = os.path.join(src_dir, name + ".rs"), os.path.join(src_dir, name)
        files = [flat] if os.path.isfile(flat) else []
        for dirpath, _, filenames in os.walk(nested):
            files += sorted(os.path.join(dirpath, f) for f in filenames if f.endswith(".rs"))
        if not files:
            raise SystemExit(f"module-cycles: {src_dir}: no file for `mod {name};`")
        modules[name] = files
    imported = {name: top for name, top in use_trees(root_code) if top in modules}
    return modules, imported


def depth_of(src_dir, path):
    """How many modules deep a file is: 1 for `name.rs` and `name/mod.rs`, 2 for `name/x.rs`."""
    rel = os.path.relpath(path, src_dir).split(os.sep)
    return len(rel) - 1 if rel[-1] == "mod.rs" else len(rel)


def graph_of(src_dir):
    """`{module: {modules it uses}}` for the crate at `src_dir`."""
    modules, imported = crate_modules(src_dir)
    graph = {}
    for module, files in modules.items():
        uses = set()
        for path in files:
            for seg in root_paths(code_of(path), depth_of(src_dir, path)):
                target = seg if seg in modules else imported.get(seg)
                if target and target != module:
                    uses.add(target)
        graph[module] = uses
    return graph


def cycles(graph):
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def a_cycle(graph, component):
    """One closed path through `component`: `a -> b -> ... -> a`."""
    members, start = set(component), component[0]
    path, seen = [start], {start}

    def walk(v):
        # Depth first, inside the component: every module of it leads back to `start`.
        for w in sorted(graph[v] & members):
            if w == start:
                return True
            if w not in seen:
                seen.add(w)
                path.append(w)
                if walk(w):
                    return True
                path.pop()
        return False

    walk(start)
    return " -> ".join(path + [start])


def main(argv):
    if not argv or any(a in ("-h", "--help") for a in argv):
        print(__doc__.strip(), file=sys.stderr if not argv else sys.stdout)
        return 2 if not argv else 0
    failed = []
    for src_dir in argv:
        graph = graph_of(src_dir)
        print(f"{src_dir}:")
        for module in sorted(graph):
            print(f"  {module} -> {' '.join(sorted(graph[module]))}".rstrip())
        found = cycles(graph)
        print("cycles:", found)
        for component in found:
            print(f"error: {src_dir}: its modules {', '.join(component)} use each other: {a_cycle(graph, component)}",
                  file=sys.stderr)
        if found:
            failed.append(src_dir)
    if failed:
        print(f"module-cycles: a cycle in {', '.join(failed)}: make those modules layers (see above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
