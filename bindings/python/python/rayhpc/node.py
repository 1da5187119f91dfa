"""`python -m rayhpc.node`: a node runtime as a process of its own, which drivers attach to
with `rayhpc.init(address="auto")` (what `rayhpc launch` starts).

It starts an embedded runtime with the resources given (or the machine's), listens in its
session directory, prints `RAYHPC_ADDRESS=<session directory>` on its first line of output,
and records the address in the job's address file (see `address_file`). It serves until
SIGTERM or SIGINT, then shuts down its workers and exits.
"""

import argparse
import json
import os
import signal
import sys


def runtime_base():
    """The directory of this user's rayhpc sessions: $RAYHPC_RUNTIME_DIR, else
    $TMPDIR/rayhpc-<uid> (as the native side makes it)."""
    base = os.environ.get("RAYHPC_RUNTIME_DIR")
    if base:
        return base
    import tempfile
    return os.path.join(tempfile.gettempdir(), f"rayhpc-{os.getuid()}")


def job_id():
    """The batch job this process belongs to (Slurm, then PBS, LSF, Flux), or "local"."""
    for var in ("SLURM_JOB_ID", "PBS_JOBID", "LSB_JOBID", "FLUX_JOB_ID"):
        v = os.environ.get(var)
        if v:
            return "".join(c if c.isalnum() or c in "-_." else "_" for c in v)
    return "local"


def address_file():
    """Where the node runtime of this job records its address: one per job, never a fixed
    global path."""
    return os.path.join(runtime_base(), f"job-{job_id()}", "address")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-cpus", type=float)
    p.add_argument("--num-gpus", type=float)
    p.add_argument("--resources", type=json.loads, default=None, help='custom resources as JSON, e.g. \'{"disk": 2}\'')
    p.add_argument("--object-store-memory", type=int)
    p.add_argument("--stop-on-stdin-eof", action="store_true",
                   help="stop when standard input closes (how `rayhpc launch` stops its node)")
    args = p.parse_args(argv)

    import rayhpc
    from rayhpc import _native

    def stop(signum, frame):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    if args.stop_on_stdin_eof:
        import threading

        def watch():
            while sys.stdin.buffer.read(4096):
                pass
            os.kill(os.getpid(), signal.SIGTERM)

        threading.Thread(target=watch, daemon=True, name="stdin-eof").start()
    rayhpc.init(num_cpus=args.num_cpus, num_gpus=args.num_gpus, resources=args.resources,
                object_store_memory=args.object_store_memory)
    address = _native.node_listen()
    path = address_file()
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    tmp = f"{path}.{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(address)
    os.replace(tmp, path)
    print(f"RAYHPC_ADDRESS={address}", flush=True)
    try:
        _native.node_serve()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        try:
            with open(path) as f:
                if f.read() == address:
                    os.remove(path)
        except OSError:
            pass
        rayhpc.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
