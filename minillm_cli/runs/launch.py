"""``minillm distill --num-processes N [--num-machines M --machine-rank R --main-process-ip IP]``: start the run on
N processes per machine through PyTorch's launcher (``torch.distributed.run``, what ``torchrun`` runs), each
process running the same ``minillm distill`` command without the launch options.

Inside a launched process (``LOCAL_RANK`` and ``WORLD_SIZE`` set: by this module, ``torchrun``, ``accelerate
launch`` or the ``deepspeed`` launcher) the launch options are ignored and the run joins the process group: the
same command works under any launcher (docs/scaling.md).

A user error (``MinillmError``) in the launched processes is reported once: each process leaves its line in a
folder the launching command names (``MINILLM_LAUNCH_ERRORS``) instead of printing it, the launcher (this module,
run as ``python -m minillm_cli.runs.launch``: ``torch.distributed.run`` without its ``ChildFailedError``
traceback) stops quietly, and the launching command prints the line and exits 2.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from ..errors import MinillmError


@dataclass
class LaunchOptions:
    num_processes: Optional[int] = None      # processes on this machine (one per GPU, or CPU processes)
    num_machines: int = 1
    machine_rank: int = 0
    main_process_ip: Optional[str] = None    # the address of machine 0, reachable from every machine
    main_process_port: Optional[int] = None

    def wanted(self) -> bool:
        return (self.num_processes or 1) > 1 or self.num_machines > 1

    def check(self) -> None:
        problems = []
        if self.num_processes is not None and self.num_processes < 1:
            problems.append(f"--num-processes must be >= 1, got {self.num_processes}")
        if self.num_machines < 1:
            problems.append(f"--num-machines must be >= 1, got {self.num_machines}")
        if not 0 <= self.machine_rank < max(self.num_machines, 1):
            problems.append(f"--machine-rank must be in 0..{self.num_machines - 1}, got {self.machine_rank}")
        if self.num_machines > 1 and not self.main_process_ip:
            problems.append("--num-machines > 1 needs --main-process-ip (the address of machine 0, reachable from all)")
        if self.num_machines > 1 and not self.main_process_port:
            problems.append("--num-machines > 1 needs --main-process-port (the same free port on every machine)")
        if problems:
            raise MinillmError("; ".join(problems))


def inside_launcher() -> bool:
    """Whether this process was started by a launcher (it then belongs to a process group)."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def launcher_command(options: LaunchOptions, module_args: Sequence[str]) -> list[str]:
    """The ``torch.distributed.run`` command that starts ``python -m minillm_cli MODULE_ARGS`` on every process."""
    from ..training.distributed import free_port

    nproc = options.num_processes or 1
    addr = options.main_process_ip or "127.0.0.1"
    port = options.main_process_port or free_port()
    return [
        sys.executable, "-m", "minillm_cli.runs.launch",
        "--nproc_per_node", str(nproc), "--nnodes", str(options.num_machines),
        "--node_rank", str(options.machine_rank), "--master_addr", addr, "--master_port", str(port),
        "-m", "minillm_cli", *module_args,
    ]


def relaunch(options: LaunchOptions, module_args: Sequence[str]) -> int:
    """Run the command on ``options.num_processes`` processes of this machine; returns the launcher's exit status.

    Each process gets OMP_NUM_THREADS = cores / processes unless it is set: processes that each start one
    OpenMP thread per core fight over the cores."""
    options.check()
    env = dict(os.environ)
    nproc = options.num_processes or 1
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    with tempfile.TemporaryDirectory(prefix="minillm-launch-") as errors:
        env[ERRORS_VARIABLE] = errors
        code = subprocess.run(launcher_command(options, module_args), env=env).returncode
        messages = reported_errors(Path(errors)) if code else []
    if messages:
        raise MinillmError("; ".join(messages))
    return code


ERRORS_VARIABLE = "MINILLM_LAUNCH_ERRORS"


def report_to_launcher(message: str) -> bool:
    """In a process launched by ``relaunch``: leave the error line for the launching command to print once (every
    process may fail the same way). False elsewhere: the caller prints it itself."""
    folder = os.environ.get(ERRORS_VARIABLE)
    if not folder or not inside_launcher() or not os.path.isdir(folder):
        return False
    rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))
    Path(folder, f"rank-{rank:05d}").write_text(message, encoding="utf-8")
    return True


def reported_errors(folder: Path) -> list[str]:
    """The distinct error lines the processes left in ``folder``, in rank order."""
    lines = [path.read_text(encoding="utf-8").strip() for path in sorted(folder.glob("rank-*"))]
    return list(dict.fromkeys(line for line in lines if line))


def run_launcher(argv: Sequence[str]) -> int:
    """``torch.distributed.run ARGV`` that ends with the first failed process's exit status instead of a
    ``ChildFailedError`` traceback: a user error's line is printed once by the launching command, and a crash's
    traceback is already in that process's own output."""
    import logging

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)   # its failure report repeats them
    try:
        run(get_args_parser().parse_args(list(argv)))
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        folder = os.environ.get(ERRORS_VARIABLE)
        if not (folder and reported_errors(Path(folder))):
            sys.stderr.write(f"error: process {rank} exited with status {failure.exitcode}; its output is above\n")
        return failure.exitcode if failure.exitcode > 0 else 1
    return 0


def distill_args(
    *, overrides: Sequence[str], recipe: Optional[str], options: dict, resume: Optional[str], overwrite: bool,
    print_config: bool, progress: bool, allow_changes: bool = False,
) -> list[str]:
    """``distill`` with the same meaning as the command that was typed, without its launch options: what every
    launched process runs. ``options`` are the config-valued flags (dotted keys), passed on as overrides."""
    args = ["distill"]
    if recipe:
        args += ["--recipe", recipe]
    if resume:
        args += ["--resume", resume]
    if overwrite:
        args.append("--overwrite")
    if allow_changes:
        args.append("--allow-changes")
    if print_config:
        args.append("--print-config")
    if not progress:
        args.append("--no-progress")
    for key, value in options.items():
        if value is None:
            continue
        if isinstance(value, bool):
            value = "true" if value else "false"
        args.append(f"{key}={value}")
    args += list(overrides)   # last: the typed overrides win over flags, as in one process
    return args


def strip_local_rank(args: Sequence[str]) -> list[str]:
    """The command line without ``--local_rank=N`` / ``--local-rank N``, which the ``deepspeed`` launcher adds to
    every process's command (the rank is read from the environment, LOCAL_RANK, instead)."""
    out, skip = [], False
    for arg in args:
        if skip:
            skip = False
            continue
        if arg in ("--local_rank", "--local-rank"):
            skip = True
            continue
        if arg.startswith(("--local_rank=", "--local-rank=")):
            continue
        out.append(arg)
    return out


if __name__ == "__main__":
    sys.exit(run_launcher(sys.argv[1:]))
