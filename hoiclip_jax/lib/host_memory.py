"""glibc malloc settings that let XLA:CPU reuse a step's buffers instead of re-faulting them.

XLA:CPU allocates the temporary buffer of every call of a compiled program with malloc, from
one of its worker threads, and frees it when the call ends. For the hico train step that buffer
is 722 MB (batch 2, 512x512). glibc serves a request that large from a fresh `mmap` and frees it
with `munmap`, so every step faults in and zeroes all of it again: on the project's 2-core
machine the step took 283,000 page faults and 0.97 s of kernel time per 3.9 s step.

With one malloc arena, no mmap'd chunks and no trimming, a freed buffer stays in the heap and
the next step reuses it: 1 page fault and 9-21 ms of kernel time per step, and the step about
12 % faster (three alternated pairs on that machine: 3,265 / 3,898 / 3,547 ms with glibc's
defaults, 3,129 / 3,197 / 3,129 ms with these; benchmarks/README.md, "Host memory"). The
evaluation forward gains nothing measurable, and neither does PyTorch with the same settings.
The cost: freed memory is not returned to the system while the process runs, so the resident
size stays at the step's peak (4.02 GiB for the hico step above, flat over 40 steps) instead of
dropping between steps, and the single heap can fragment: a probe program with a 64 MB
temporary buffer grew its heap at 10 of 400 calls, to 1.6 GB (the hico step did not grow).
Transparent huge pages (`glibc.malloc.hugetlb=1`) were slower in 3 of 3 alternated runs and
added 1 GiB of RSS, so they are not set.

glibc reads its tunables once, when a process starts, so the command-line entry points call
`reexec_with_malloc_tunables()` first: it sets `GLIBC_TUNABLES` and re-executes the same
command line (same process id) before anything else has run. A user's own setting of any of
these tunables wins; `HOICLIP_MALLOC_TUNABLES=0` keeps glibc's defaults altogether.
"""
import os
import platform
import sys

OPT_OUT = "HOICLIP_MALLOC_TUNABLES"
TUNABLES = (
    ("glibc.malloc.arena_max", "1"),         # every thread allocates from the brk heap
    ("glibc.malloc.mmap_max", "0"),          # never a separate mapping per large request
    ("glibc.malloc.trim_threshold", str(1 << 40)),  # freed memory stays for the next step
)


def merged_tunables(existing: str) -> str:
    """`existing` GLIBC_TUNABLES ('name=value:name=value') plus the ones of `TUNABLES` that it
    does not set (the user's values win)."""
    entries = [e for e in existing.split(":") if e]
    present = {e.split("=", 1)[0] for e in entries}
    entries += [f"{name}={value}" for name, value in TUNABLES if name not in present]
    return ":".join(entries)


def applies(environ=os.environ) -> bool:
    """Whether this process should run with the tunables but does not yet: glibc on Linux, not
    opted out, and GLIBC_TUNABLES lacking one of them."""
    if environ.get(OPT_OUT, "1") == "0":
        return False
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    existing = environ.get("GLIBC_TUNABLES", "")
    return merged_tunables(existing) != existing


def reexec_with_malloc_tunables() -> None:
    """Re-executes this process's command line with the tunables (module docstring), or
    returns at once when they are in effect, opted out of or not applicable. Call it first in
    a program's `__main__`, before jax is imported."""
    if not applies():
        return
    os.environ["GLIBC_TUNABLES"] = merged_tunables(os.environ.get("GLIBC_TUNABLES", ""))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable] + sys.orig_argv[1:])
