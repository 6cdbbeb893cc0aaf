"""Smoke experiment (not a pytest test): how preemption signals and requeues reach a 2-task submitit job.

    .venv/bin/python tests/cluster/smoke_preempt.py --scenario usr2
    .venv/bin/python tests/cluster/smoke_preempt.py --scenario requeue [--start-now]
    .venv/bin/python tests/cluster/smoke_preempt.py --scenario usr2-full
    .venv/bin/python tests/cluster/smoke_preempt.py --scenario timelimit
    .venv/bin/python tests/cluster/smoke_preempt.py --scenario cancel

The job is a `submitit.helpers.Checkpointable` that loops `--steps` steps of `--step-s` seconds on every
rank, stores its progress per rank on disk (resumes from it after a restart) and logs to events.log
every start, every SIGUSR2/SIGTERM it receives (the log handler then calls submitit's own handler),
and its end. The driver sends the scenario's signal once every rank has started, then prints the
timeline (seconds since the signal) and the sacct history (`sacct -D`).

Scenarios:
  usr2       scancel --signal=USR2 JOBID          (what a preemption warning / submitit's _interrupt does)
  usr2-full  scancel --signal=USR2 --full JOBID   (also the batch shell)
  requeue    scontrol requeue JOBID               (admin/preemption requeue without warning)
  timelimit  no manual signal: --time=2 min with signal_delay_s=100 -> Slurm's own USR2@100
  cancel     scancel JOBID                        (a user cancel: must not come back)
--start-now: after the requeue, `scontrol update JobId=X StartTime=now` (skips the cred_expire wait).
"""

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import submitit


def _log(workdir: str, msg: str) -> None:
    line = f"{time.time():.3f} {msg}\n"
    with open(os.path.join(workdir, "events.log"), "a") as f:
        f.write(line)


class Looper(submitit.helpers.Checkpointable):
    def __call__(self, workdir: str, steps: int, step_s: float) -> dict:
        rank = int(os.environ.get("SLURM_PROCID", "0"))
        restart = os.environ.get("SLURM_RESTART_COUNT", "unset")
        host = os.uname().nodename
        prog = Path(workdir) / f"progress_rank{rank}"
        start = int(prog.read_text()) if prog.exists() else 0
        _log(workdir, f"START rank={rank} restart={restart} host={host} pid={os.getpid()} from_step={start}")

        def wrap(sig):
            prev = signal.getsignal(sig)

            def handler(signum, frame):
                _log(workdir, f"SIGNAL rank={rank} restart={restart} sig={signal.Signals(signum).name}")
                if callable(prev):
                    prev(signum, frame)

            signal.signal(sig, handler)

        wrap(signal.SIGUSR2)
        wrap(signal.SIGTERM)
        for step in range(start, steps):
            time.sleep(step_s)
            prog.write_text(str(step + 1))
        _log(workdir, f"END rank={rank} restart={restart}")
        return {"rank": rank, "restart": restart, "resumed_from": start}


def sh(cmd: str) -> str:
    r = subprocess.run(cmd, shell=True, capture_output=True, text=True)
    return (r.stdout + r.stderr).strip()


def events(workdir: str) -> list:
    p = Path(workdir) / "events.log"
    if not p.exists():
        return []
    return [line.split(" ", 1) for line in p.read_text().splitlines() if line]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scenario", default="usr2", choices=["usr2", "usr2-full", "requeue", "timelimit", "cancel"])
    ap.add_argument("--start-now", action="store_true")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--step-s", type=float, default=1.0)
    ap.add_argument("--tasks", type=int, default=2)
    ap.add_argument("--nodes", type=int, default=1)
    ap.add_argument("--deadline", type=float, default=300.0)
    a = ap.parse_args()

    workdir = tempfile.mkdtemp(prefix=f"preempt_{a.scenario}_", dir="/tmp")
    ex = submitit.AutoExecutor(folder=os.path.join(workdir, "submitit"), cluster="slurm", slurm_max_num_timeout=3)
    params = dict(nodes=a.nodes, tasks_per_node=a.tasks // a.nodes, cpus_per_task=1, mem_gb=1, timeout_min=20)
    steps = a.steps
    if a.scenario == "timelimit":
        params.update(timeout_min=2, slurm_signal_delay_s=100)
        steps = 150  # longer than the time limit; the USR2 at T-100 s must requeue it
    ex.update_parameters(**params)
    job = ex.submit(Looper(), workdir, steps, a.step_s)
    jid = job.job_id
    print(f"job {jid}, workdir {workdir}", flush=True)
    t_sub = time.time()
    end = t_sub + a.deadline

    def n_starts(restart: str) -> int:
        return sum(1 for _, m in events(workdir) if m.startswith("START") and f"restart={restart} " in m)

    while n_starts("unset") < a.tasks and time.time() < end:
        time.sleep(0.2)
    print(f"all {a.tasks} ranks started {time.time() - t_sub:.1f}s after submit", flush=True)
    time.sleep(2)
    t_sig = time.time()
    if a.scenario == "usr2":
        print(sh(f"scancel --signal=USR2 {jid}"))
    elif a.scenario == "usr2-full":
        print(sh(f"scancel --signal=USR2 --full {jid}"))
    elif a.scenario == "requeue":
        print(sh(f"scontrol requeue {jid}"))
    elif a.scenario == "cancel":
        print(sh(f"scancel {jid}"))
    if a.start_now:
        # wait until slurmctld shows it pending again, then lift the BeginTime
        while time.time() < end and sh(f"squeue -h -j {jid} -o %T") not in ("PENDING",):
            time.sleep(0.2)
        print(sh(f"scontrol show job {jid} | grep -oE '(JobState|Reason|EligibleTime)=[^ ]+'"))
        print(sh(f"scontrol update JobId={jid} StartTime=now"), flush=True)

    # wait for the end: job finished in sacct (restarted and completed, or gone for good)
    final = None
    while time.time() < end:
        st = sh(f"sacct -n -X -P -j {jid} -o State").splitlines()
        st = st[-1] if st else ""
        if st and st.split()[0] in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"):
            final = st
            break
        time.sleep(1)
    t_end = time.time()
    print(
        f"\n=== scenario {a.scenario}{' +StartTime=now' if a.start_now else ''}: final sacct state {final!r} "
        f"{t_end - t_sig:.1f}s after the signal"
    )
    base = t_sig
    print("timeline (s since signal):")
    for ts, msg in events(workdir):
        print(f"  {float(ts) - base:+7.2f}  {msg}")
    print("sacct -D (all runs of the job):")
    print(
        sh(
            f"sacct -D -j {jid} -P -o JobID,State,ExitCode,Start,End,Elapsed,NodeList,Restarts 2>/dev/null"
            f" || sacct -D -j {jid} -P -o JobID,State,ExitCode,Start,End,Elapsed,NodeList"
        )
    )
    print("submitit logs (signal lines):")
    for f in sorted(Path(workdir, "submitit").glob(f"{jid}_*_log.*")):
        for line in f.read_text(errors="replace").splitlines():
            if any(k in line for k in ("signal", "SIG", "equeu", "Exiting", "timed", "CANCELLED", "error")):
                print(f"  {f.name}: {line[:200]}")
    try:
        state = job.watcher.get_state(jid, mode="force")
        print(f"submitit job.state: {state}; done(): {job.done(force_check=True)}")
        if final and final.startswith("COMPLETED"):
            print("results:", job.results())
    except Exception as e:  # noqa: BLE001
        print(f"submitit raised: {type(e).__name__}: {str(e)[:500]}")
    if final is None:
        print("deadline reached: cancelling")
        sh(f"scancel {jid}")
        return 1
    restarted = {m.split()[1] for _, m in events(workdir) if m.startswith("START") and "restart=1 " in m}
    if a.scenario in ("usr2", "usr2-full", "requeue"):
        ok = final.startswith("COMPLETED") and len(restarted) == a.tasks
    elif a.scenario == "cancel":
        ok = final.startswith("CANCELLED") and not restarted
    else:  # timelimit: requeued max_num_timeout (3) times, then submitit gives up
        ok = any("restart=3 " in m for _, m in events(workdir))
    print("OK" if ok else "FAIL (unexpected outcome)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
