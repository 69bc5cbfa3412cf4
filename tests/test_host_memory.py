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

# Page faults per call of a program whose 64 MB temporary buffer XLA allocates at every call.
FAULT_PROBE = """
import resource
import jax, jax.numpy as jnp
f = jax.jit(lambda x: (jnp.cumsum(x, axis=0) * 2).sum(0))
x = jnp.ones((4096, 4096), jnp.float32)
f(x).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    f(x).block_until_ready()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 4)
"""

glibc_only = pytest.mark.skipif(not host_memory.applies({}), reason="glibc on Linux only")


def run_probe(code: str, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items()
               if k not in ("GLIBC_TUNABLES", host_memory.OPT_OUT)}
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
                            env={k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"},
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
    again (64 MB = 16,384 pages of 4 KiB); with them the freed buffer is reused."""
    default = float(run_probe(FAULT_PROBE).stdout.split()[-1])
    tuned = float(run_probe(FAULT_PROBE, GLIBC_TUNABLES=OURS).stdout.split()[-1])
    assert default > 8000, default
    assert tuned < 0.05 * default, (tuned, default)
