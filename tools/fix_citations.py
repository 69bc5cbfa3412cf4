#!/usr/bin/env python3
"""Points the section citations of the repository at docs/reference.md, or checks them.

    python3 tools/fix_citations.py           # rewrite, then check
    python3 tools/fix_citations.py --check   # rewrite nothing; list what does not resolve

docs/reference.md holds the reference behaviour in two parts. Part 1 mirrors the numbering of
the old hoiclip-reference.md ("<S>1.6"). Part 2 is the old evaluation-protocols.md, with every
number prefixed by P ("<S>P2"). Here <S> stands for the section sign, U+00A7. This file never
writes it literally, so a grep for citations does not find this tool's examples.

Files: every text file of the repository (.py .md .sh .txt .cfg .toml .yaml .yml .rst .ini,
Makefile). The walk skips hidden folders (.git, .venv, ...), __pycache__, node_modules,
*.egg-info, the top-level shared/, docs/reference.md itself and this script. A file is found
wherever it lives, and every rule matches on text only, never on a path.

Rewrite rules, applied in this order:
  1. README sentence: "Reference sections (<S>) point into the HOICLIP behaviour spec that this
     port follows (`shared/docs/hoiclip-reference.md` of the project workspace)" becomes "...
     (<S>, and <S>P for the evaluation protocols) ... (`docs/reference.md` in this repository)".
  2. design.md sentence: "Reference section numbers (<S>) point into
     `../shared/docs/hoiclip-reference.md`." becomes "Reference section numbers (<S>; <S>P for
     the evaluation protocols) point into `docs/reference.md`."
  3. Citations of the protocols document get the P prefix. A citation list (<S>a, <S>b and <S>c)
     qualifies when it directly follows "evaluation-protocols", "evaluation-protocols.md",
     "evaluation protocols", "protocols" (optionally "doc"/"document" in between), or a path to
     shared/docs/evaluation-protocols.md. The path itself becomes docs/reference.md:
     "evaluation-protocols <S>2" -> "evaluation-protocols <S>P2";
     "`shared/docs/evaluation-protocols.md` <S>2" -> "`docs/reference.md` <S>P2".
  4. Sub-points of reference 1.5, which is one heading with numbered steps:
     "<S>1.5.N" (N = 1..6) -> "<S>1.5 step N", the form the code already uses elsewhere.
  5. Sub-points of reference 11, which is one heading with numbered items:
     "<S>11.N" (N = 1..10) -> "<S>11 item N".
  6. Any remaining path to the old documents becomes docs/reference.md:
     "[../]shared/docs/hoiclip-reference.md" and "[../]shared/docs/evaluation-protocols.md".
Running it twice changes nothing the second time.

Check (--check, and after a rewrite): every citation "<S>N[.N...]" or "<S>PN[.N...]" must be a
heading of docs/reference.md, that is a line "#... <S>N.N Title". A protocols citation that is
still in the unprefixed form is unresolved as well, even when a Part-1 heading of that number
exists. --check also lists the changes a rewrite would make. The exit status is 1 when anything
is unresolved, 0 otherwise.
"""
import argparse
import os
import re
import sys

SECT = "\u00a7"
NUM = r"[0-9]+(?:\.[0-9]+)*"
HEADING_RE = re.compile(r"^#+ (" + SECT + r"P?" + NUM + r") ", re.M)
CITATION_RE = re.compile(SECT + r"(P?)(" + NUM + r")")
# A list of citations: <S>a, <S>b and <S>c / <S>d
CITE_LIST = (SECT + r"P?" + NUM + r"(?:(?:\s*,\s*|\s+and\s+|\s+or\s+|\s*/\s*)" + SECT
             + r"P?" + NUM + r")*")
PROTO_PATH = r"(?P<bt>`?)(?:\.\./|/work/)?shared/docs/evaluation-protocols\.md(?P=bt)"
PROTO_NAME = r"\bevaluation[- ]protocols(?:\.md)?|\bprotocols"
PROTO_RE = re.compile(r"(?P<prefix>" + PROTO_PATH + r"|" + PROTO_NAME + r")"
                      r"(?P<sep>\s+(?:doc(?:ument)?\s+)?)(?P<list>" + CITE_LIST + r")")
OLD_DOC_RE = re.compile(r"(?:\.\./|/work/)?shared/docs/(?:hoiclip-reference|evaluation-protocols)"
                        r"\.md")

TEXT_SUFFIXES = (".py", ".md", ".sh", ".txt", ".cfg", ".toml", ".yaml", ".yml", ".rst", ".ini")
TEXT_NAMES = ("Makefile",)
SKIP_DIRS = ("__pycache__", "node_modules")
MAX_BYTES = 4 << 20


def _break(space: str) -> str:
    """The line break found in `space` (kept as it was: \n or \r\n), else one space."""
    found = re.search(r"\r?\n", space)
    return found.group(0) if found else " "


def _proto_sub(m: re.Match) -> str:
    prefix = m.group("prefix")
    if "shared/docs/" in prefix:
        bt = m.group("bt") or ""
        prefix = f"{bt}docs/reference.md{bt}"
    cites = CITATION_RE.sub(lambda c: f"{SECT}P{c.group(2)}", m.group("list"))
    return prefix + m.group("sep") + cites


RULES = [
    ("README deviations sentence",
     re.compile(r"Reference sections \(" + SECT + r"\) point into the HOICLIP behaviour spec"
                r"(?P<s1>\s+)that this port follows(?P<s2>\s+)\(`(?:\.\./)?shared/docs/"
                r"hoiclip-reference\.md` of the project workspace\)"),
     lambda m: (f"Reference sections ({SECT}, and {SECT}P for the evaluation protocols) point "
                f"into the HOICLIP{_break(m.group('s1') + m.group('s2'))}behaviour spec that "
                f"this port follows (`docs/reference.md` in this repository)")),
    ("design.md conventions sentence",
     re.compile(r"Reference section numbers \(" + SECT + r"\) point into(?P<s>\s+)"
                r"`(?:\.\./)?shared/docs/hoiclip-reference\.md`"),
     lambda m: (f"Reference section numbers ({SECT}; {SECT}P for the evaluation protocols) "
                f"point into{m.group('s')}`docs/reference.md`")),
    ("protocols citation -> P form", PROTO_RE, _proto_sub),
    ("reference 1.5 sub-point -> step",
     re.compile(SECT + r"1\.5\.([1-6])(?![0-9.]*[0-9])"),
     lambda m: f"{SECT}1.5 step {m.group(1)}"),
    ("reference 11 sub-point -> item",
     re.compile(SECT + r"11\.(10|[1-9])(?![0-9.]*[0-9])"),
     lambda m: f"{SECT}11 item {m.group(1)}"),
    ("old document path -> docs/reference.md", OLD_DOC_RE, lambda m: "docs/reference.md"),
]


def find_root(start: str) -> str:
    """The nearest folder at or above `start` that holds .git (else `start`)."""
    d = os.path.abspath(start)
    while True:
        if os.path.exists(os.path.join(d, ".git")):
            return d
        parent = os.path.dirname(d)
        if parent == d:
            return os.path.abspath(start)
        d = parent


def walk_files(root: str, exclude: set) -> list:
    out = []
    for d, dirs, files in os.walk(root):
        rel = os.path.relpath(d, root)
        dirs[:] = sorted(x for x in dirs
                         if not x.startswith(".") and x not in SKIP_DIRS
                         and not x.endswith(".egg-info")
                         and not (rel == "." and x == "shared"))
        for f in sorted(files):
            if not (f.endswith(TEXT_SUFFIXES) or f in TEXT_NAMES):
                continue
            p = os.path.join(d, f)
            if os.path.realpath(p) in exclude or os.path.getsize(p) > MAX_BYTES:
                continue
            out.append(p)
    return out


def read(path: str):
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            return fh.read()
    except (UnicodeDecodeError, OSError):
        return None


def line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def one_line(s: str) -> str:
    return re.sub(r"\s+", " ", s)


def rewrite_text(text: str):
    """(new text, [(rule, line, before, after)]) after applying RULES in order."""
    changes = []
    for name, rx, fn in RULES:
        def repl(m, name=name, fn=fn, current=text):
            new = fn(m)
            if new != m.group(0):
                changes.append((name, line_of(current, m.start()), m.group(0), new))
            return new
        text = rx.sub(repl, text)
    return text, changes


def unresolved(text: str, headings: set):
    """[(line, citation, why)] of the citations in `text` that match no heading."""
    out, proto_spans = [], []
    for m in PROTO_RE.finditer(text):
        proto_spans.append(m.span("list"))
        for c in CITATION_RE.finditer(m.group("list")):
            pos = m.start("list") + c.start()
            if not c.group(1):
                target = f"{SECT}P{c.group(2)}"
                why = (f"cites the evaluation-protocols document: must be {target}"
                       + ("" if target in headings else f" (and {target} is no heading either)"))
                out.append((line_of(text, pos), c.group(0), why))
            elif c.group(0) not in headings:
                out.append((line_of(text, pos), c.group(0), "no such heading"))
    for c in CITATION_RE.finditer(text):
        if any(a <= c.start() < b for a, b in proto_spans):
            continue
        if c.group(0) not in headings:
            out.append((line_of(text, c.start()), c.group(0), "no such heading"))
    return sorted(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true",
                    help="rewrite nothing; list unresolved citations and pending rewrites")
    ap.add_argument("--root", default=None,
                    help="repository root (default: the git root above this script)")
    ap.add_argument("--reference", default="docs/reference.md",
                    help="the reference document, relative to the root")
    args = ap.parse_args(argv)

    root = os.path.abspath(args.root) if args.root else find_root(
            os.path.dirname(os.path.abspath(__file__)))
    ref_path = os.path.join(root, args.reference)
    ref_text = read(ref_path)
    if ref_text is None:
        print(f"cannot read {ref_path}", file=sys.stderr)
        return 2
    headings = set(HEADING_RE.findall(ref_text))
    exclude = {os.path.realpath(ref_path), os.path.realpath(__file__)}
    files = walk_files(root, exclude)

    pending, bad = [], []
    for path in files:
        text = read(path)
        if text is None or (SECT not in text and "shared/docs/" not in text):
            continue
        rel = os.path.relpath(path, root)
        new, changes = rewrite_text(text)
        pending += [(rel,) + c for c in changes]
        if not args.check and new != text:
            with open(path, "w", encoding="utf-8", newline="") as fh:
                fh.write(new)
            text = new
        bad += [(rel,) + u for u in unresolved(text, headings)]

    print(f"{len(headings)} headings in {args.reference}; {len(files)} files scanned")
    verb = "would change" if args.check else "changed"
    print(f"\nRewrite rules {verb} {len(pending)} place(s):")
    for rel, rule, line, before, after in pending:
        print(f"  {rel}:{line}: [{rule}] {one_line(before)!r} -> {one_line(after)!r}")
    print(f"\nUnresolved citations: {len(bad)}")
    for rel, line, cite, why in bad:
        print(f"  {rel}:{line}: {cite}: {why}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
