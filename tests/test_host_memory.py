"""hoiclip_jax/lib/host_memory.py: the malloc tunables, the re-execution, and their effect."""
import os
import subprocess
import sys

import pytest

from hoiclip_jax.lib import host_memory

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OURS = ":".join(f"{name}={value}" for name, value in host_memory.TUNABLES)

# Prints its process id and GLIBC_TUNABLES after the call an entry point makes first.
REEXEC_PROBE = """
import os
from hoiclip_jax.lib import host_memory
host_memory.reexec_with_malloc_tunables()
print(os.getpid(), os.environ.get("GLIBC_TUNABLES", "<unset>"))
"""

# Page faults of each of 40 calls of a program whose 64 MB temporary buffer XLA allocates at
# every call, after one warm-up call.
FAULT_PROBE = """
import resource
import jax, jax.numpy as jnp
f = jax.jit(lambda x: (jnp.cumsum(x, axis=0) * 2).sum(0))
x = jnp.ones((4096, 4096), jnp.float32)
f(x).block_until_ready()
faults = []
for _ in range(40):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f(x).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(*faults)
"""
FAULTING_CALL = 4096  # page faults: a quarter of the buffer's 16,384 pages of 4 KiB

glibc_only = pytest.mark.skipif(not host_memory.applies({}), reason="glibc on Linux only")


def run_probe(code: str, **env: str) -> subprocess.CompletedProcess:
    """Runs `code` in a fresh Python with glibc's defaults (unless `env` sets GLIBC_TUNABLES) and
    XLA's default optimisation (the tests' level 0 runs the probe's cumsum 25x slower)."""
    environ = {k: v for k, v in os.environ.items()
               if k not in ("GLIBC_TUNABLES", host_memory.OPT_OUT, "XLA_FLAGS")}
    return subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=dict(environ, **env),
                          capture_output=True, text=True, timeout=300, check=True)


def test_merged_tunables_add_ours_and_keep_the_users_values():
    assert host_memory.merged_tunables("") == OURS
    merged = host_memory.merged_tunables("glibc.malloc.arena_max=4:glibc.cpu.x86_ibt=on")
    entries = merged.split(":")
    assert entries[:2] == ["glibc.malloc.arena_max=4", "glibc.cpu.x86_ibt=on"]
    assert "glibc.malloc.arena_max=1" not in entries
    assert {e.split("=")[0] for e in entries} == {
        "glibc.cpu.x86_ibt"} | {name for name, _ in host_memory.TUNABLES}
    assert host_memory.merged_tunables(OURS) == OURS


@glibc_only
def test_applies_until_set_and_never_when_opted_out():
    assert host_memory.applies({})
    assert host_memory.applies({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})
    assert not host_memory.applies({"GLIBC_TUNABLES": OURS})
    assert not host_memory.applies({host_memory.OPT_OUT: "0"})


@glibc_only
def test_reexec_keeps_the_process_and_sets_the_tunables():
    proc = subprocess.Popen([sys.executable, "-c", REEXEC_PROBE], cwd=REPO_ROOT,
                            env={k: v for k, v in os.environ.items()
                                 if k not in ("GLIBC_TUNABLES", host_memory.OPT_OUT)},
                            stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate(timeout=120)
    pid, tunables = out.split()
    assert int(pid) == proc.pid and proc.returncode == 0
    assert tunables == OURS
    out = run_probe(REEXEC_PROBE, **{host_memory.OPT_OUT: "0"}).stdout
    assert out.split()[1] == "<unset>"


@glibc_only
def test_tunables_stop_the_per_call_page_faults():
    """The reason for all this: without the tunables every call faults its temporary buffer in
    again; with them most calls reuse the freed one. Some still fault where the single heap
    fragments and grows (8 of 40 calls in one run of this probe; the hico train step's RSS
    stayed flat over 40 steps)."""
    default = [int(n) for n in run_probe(FAULT_PROBE).stdout.split()]
    tuned = [int(n) for n in run_probe(FAULT_PROBE, GLIBC_TUNABLES=OURS).stdout.split()]
    assert len(default) == len(tuned) == 40
    assert min(default) > FAULTING_CALL, default
    assert sum(n > FAULTING_CALL for n in tuned) <= len(tuned) // 2, tuned
    assert sum(tuned) < 0.5 * sum(default), (tuned, default)
