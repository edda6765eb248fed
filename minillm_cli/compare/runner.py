"""Run a comparison plan: each stage is a `minillm distill` or `minillm eval` subprocess, at most ``parallel``
at a time, each with ``threads`` torch threads; resumable, with progress.

Why subprocesses: each stage gets its own thread count and memory, a crash stays in its stage, and the
commands in the logs are exactly what a user would type to rerun one stage.

Resuming is by what is on disk: a training stage is done when its run exported ``final``; one that has a
complete checkpoint continues from it (``--resume``: the time already used counts against a budget); an
evaluation is done when its ``results.json`` exists. ``compare.json`` in the output directory records each
stage's status, commands and wall time.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from ..atomic import atomic_open
from ..errors import MinillmError
from .plan import Plan

STATE_NAME = "compare.json"
HEARTBEAT_SECONDS = 60.0


@dataclass
class Job:
    name: str                   # "train KD", "eval KD", "report"
    kind: str                   # train | eval | report
    stage: str
    after: list = field(default_factory=list)   # job names


class Comparison:
    """One plan, laid out under ``output_dir``: ``<stage>/`` (distill runs), ``eval/<stage>/``, ``results/``,
    ``logs/<job>.log`` and ``compare.json``."""

    def __init__(self, plan: Plan, *, data_dir: Optional[str], output_dir: Optional[str] = None,
                 parallel: Optional[int] = None, threads: Optional[int] = None,
                 budget_minutes: Optional[float] = None, log: Callable[[str], None] = print):
        self.plan = plan
        self.data_dir = str(Path(data_dir).resolve()) if data_dir else ""
        self.out = Path(output_dir or plan.output_dir)
        self.parallel = parallel or plan.parallel
        self.threads = threads or plan.threads
        self.budget = budget_minutes or plan.budget_minutes
        self.log = log
        self.state = self._read_state()

    # --- layout -------------------------------------------------------------------------------------------

    def run_dir(self, stage: str) -> Path:
        return self.out / stage

    def model_dir(self, stage: str) -> Path:
        """The exported model that stands for a stage (best falls back to final, as distill's does); for a swept
        stage, its winner's (before the sweep has finished: its first run's, for dry runs)."""
        if stage in self.plan.sweeps:
            stage = self.winner(stage) or self.plan.sweeps[stage][0]
        run = self.run_dir(stage)
        if self.plan.stage(stage).export == "best" and (run / "best").is_dir():
            return run / "best"
        return run / "final"

    def sweep_scores(self, stage: str) -> dict:
        """{run: its best validation (sweep.validation_score), or None while it has not finished}."""
        from .sweep import validation_score

        return {child: validation_score(self.run_dir(child)) if (self.run_dir(child) / "final").is_dir() else None
                for child in self.plan.sweeps[stage]}

    def winner(self, stage: str) -> Optional[str]:
        """The run of a swept stage that stands for it, once all its runs have finished."""
        from .sweep import choose

        scores = self.sweep_scores(stage)
        return choose(scores) if all(v is not None for v in scores.values()) else None

    def eval_dir(self, stage: str) -> Path:
        return self.out / "eval" / stage

    def log_path(self, job: Job) -> Path:
        return self.out / "logs" / (job.name.replace(" ", "_") + ".log")

    # --- jobs ---------------------------------------------------------------------------------------------

    def jobs(self) -> list[Job]:
        jobs = [Job(f"train {s.name}", "train", s.name, [f"train {a}" for a in s.after]) for s in self.plan.stages]
        exposure = self.plan.evaluate.exposure
        def trained(name):
            return [f"train {run}" for run in self.plan.sweeps.get(name, [name])]

        for model in self.plan.evaluate.models:
            after = trained(model)
            if exposure and exposure["teacher"] != model:
                after += trained(exposure["teacher"])
            jobs.append(Job(f"eval {model}", "eval", model, after))
        jobs.append(Job("report", "report", "", [f"eval {m}" for m in self.plan.evaluate.models]))
        return jobs

    def is_done(self, job: Job) -> bool:
        if job.kind == "train":
            return (self.run_dir(job.stage) / "final").is_dir()
        if job.kind == "eval":
            return (self.eval_dir(job.stage) / "results.json").is_file()
        return False   # the report is cheap: always rewritten

    def _substitute(self, template: str) -> str:
        values = {"data_dir": self.data_dir, "output_dir": str(self.out)}
        values.update({name: str(self.model_dir(name)) for name in self.plan.names()})
        return template.format(**values)

    def command(self, job: Job) -> list[str]:
        base = [sys.executable, "-m", "minillm_cli"]
        if job.kind == "train":
            stage = self.plan.stage(job.stage)
            run = self.run_dir(stage.name)
            budget = [f"train.max_minutes={self.budget:g}"] if stage.budget else []
            if _has_checkpoint(run):
                # The run's own config comes from its checkpoint; the budget is restated so a changed
                # --budget-minutes applies (the time used so far is in the checkpoint).
                return base + ["distill", "--resume", str(run), "--no-progress", *budget]
            overrides = [self._substitute(o) for o in self.plan.overrides + stage.overrides]
            fresh = ["--overwrite"] if run.exists() else []   # a start that died before its first checkpoint
            return base + ["distill", "--recipe", stage.recipe, "--output-dir", str(run), "--no-progress",
                           *fresh, *overrides, *budget]
        if job.kind == "eval":
            e = self.plan.evaluate
            own = e.suites_for.get(job.stage)   # a model's own suites are exactly those: exposure only if listed
            suites = [s for s in own if s != "exposure"] if own else list(e.suites)
            extra = []
            if e.exposure and e.exposure["teacher"] != job.stage and (own is None or "exposure" in own):
                suites.append("exposure")
                extra += ["--teacher", str(self.model_dir(e.exposure["teacher"]))]
                extra += [f"--set=exposure.{k}={v}" for k, v in e.exposure.items() if k != "teacher"]
            command = base + ["eval", "--model", str(self.model_dir(job.stage)), "--suite", ",".join(suites),
                              "--seeds", ",".join(str(s) for s in e.seeds), "--max-new-tokens", str(e.max_new_tokens),
                              "--batch-size", str(e.batch_size), "--out", str(self.eval_dir(job.stage)), "--no-plots"]
            if self.data_dir:
                command += ["--data-dir", self.data_dir]
            if e.limit:
                command += ["--limit", str(e.limit)]
            return command + extra + _args_for(list(e.args), suites)
        return []

    def check_data(self) -> None:
        """Before anything runs (a dry run too): every path the plan reads through {data_dir} exists and every
        evaluation suite finds its test set; else one line listing what is missing."""
        from ..evaluation.base import EvalContext
        from ..evaluation.select import build_evaluators

        problems = []
        for template in self.plan.overrides + [o for s in self.plan.stages for o in s.overrides]:
            key, _, value = self._substitute(template).partition("=")
            if "{data_dir}" in template and not Path(value).exists():
                problems.append(f"{key}: {value} does not exist")
        context = EvalContext(model_name="", data_dir=Path(self.data_dir) if self.data_dir else None,
                              limit=self.plan.evaluate.limit)
        for evaluator in build_evaluators(self.plan.evaluate.suites):
            try:
                evaluator.check(context)
            except MinillmError as exc:
                problems.append(str(exc))
        if problems:
            raise MinillmError(f"plan '{self.plan.path.stem}' cannot find its data: " + "; ".join(problems))

    # --- state --------------------------------------------------------------------------------------------

    def _read_state(self) -> dict:
        path = self.out / STATE_NAME
        if path.is_file():
            try:
                return json.loads(path.read_text())
            except (OSError, ValueError):
                pass   # a damaged state file: the products on disk still say what is done
        return {"jobs": {}}

    def _write_state(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        self.state.update(plan=str(self.plan.path), data_dir=self.data_dir, parallel=self.parallel,
                          threads=self.threads, budget_minutes=self.budget)
        with atomic_open(self.out / STATE_NAME) as handle:
            json.dump(self.state, handle, indent=2)

    def _record(self, job: Job) -> dict:
        return self.state["jobs"].setdefault(job.name, {"status": "pending", "seconds": 0.0, "attempts": 0})

    # --- running ------------------------------------------------------------------------------------------

    def run(self, dry_run: bool = False) -> int:
        """Run every job not done yet; 0 when all succeeded, 1 when some failed, 130 on Ctrl-C."""
        jobs = self.jobs()
        if dry_run:
            for job in jobs:
                status = "done" if self.is_done(job) else "to run"
                self.log(f"{job.name:<18} {status:<7} {' '.join(self.command(job)) or '(merge the evaluations)'}")
            return 0
        self.out.mkdir(parents=True, exist_ok=True)
        pending = []
        for job in jobs:
            record = self._record(job)
            if self.is_done(job):
                record["status"] = "done"
            else:
                record["status"] = "pending"
                pending.append(job)
        done = {j.name for j in jobs if self._record(j)["status"] == "done"}
        failed: set = set()
        running: dict = {}   # job name -> (job, Popen, started, log handle)
        self._write_state()
        self.log(f"comparison {self.plan.path.stem}: {len(done)} of {len(jobs)} stages done, {len(pending)} to run, "
                 f"{self.parallel} at a time, {self.threads or 'default'} thread(s) each → {self.out}")
        last_beat = time.monotonic()
        previous = _catch_stop_signals()
        try:
            while pending or running:
                for name, (job, proc, started, handle) in list(running.items()):
                    code = proc.poll()
                    if code is None:
                        continue
                    handle.close()
                    del running[name]
                    record = self._record(job)
                    record["seconds"] += time.time() - started
                    record["returncode"] = code
                    record["finished"] = _now()
                    if code == 0 and self.is_done(job):
                        record["status"] = "done"
                        done.add(name)
                        self.log(f"done    {name} in {_minutes(time.time() - started)}")
                    else:
                        record["status"] = "failed"
                        failed.add(name)
                        self.log(f"FAILED  {name} (exit {code}): {_last_line(self.log_path(job))}; log {self.log_path(job)}")
                    self._write_state()
                for job in list(pending):
                    if job.kind == "report":
                        # the table of whatever was evaluated, once nothing else can still finish
                        if not any(j.name in job.after for j in pending if j is not job) and not any(
                                name in job.after for name in running):
                            pending.remove(job)
                            self._report(job)
                            done.add(job.name)
                        continue
                    if any(dep in failed or self._record_of(dep) == "blocked" for dep in job.after):
                        pending.remove(job)
                        self._record(job)["status"] = "blocked"
                        self.log(f"skipped {job.name}: it needs {', '.join(d for d in job.after if d not in done)}")
                        continue
                    if len(running) >= self.parallel or not all(dep in done for dep in job.after):
                        continue
                    pending.remove(job)
                    running[job.name] = self._start(job)
                if running and time.monotonic() - last_beat >= HEARTBEAT_SECONDS:
                    last_beat = time.monotonic()
                    self.log("running " + "; ".join(self._progress(job, started) for job, _, started, _ in running.values()))
                if running:
                    time.sleep(1.0)
                self._write_state()
        except KeyboardInterrupt:
            self.log("interrupted: stopping the running stages (distill saves a checkpoint); rerun to continue")
            for job, proc, started, handle in running.values():
                # distill stops after its current step and saves a checkpoint on SIGINT; an evaluation has
                # nothing to keep and reruns from the start
                proc.send_signal(signal.SIGINT if job.kind == "train" else signal.SIGTERM)
            for job, proc, started, handle in running.values():
                try:
                    proc.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    proc.kill()
                handle.close()
                record = self._record(job)
                record["seconds"] += time.time() - started
                record["status"] = "interrupted"
            self._write_state()
            return 130
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        self._write_state()
        return 1 if failed or any(self._record(j)["status"] == "blocked" for j in jobs) else 0

    def _record_of(self, name: str) -> str:
        return self.state["jobs"].get(name, {}).get("status", "pending")

    def _start(self, job: Job):
        command = self.command(job)
        path = self.log_path(job)
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a", encoding="utf-8")
        handle.write(f"\n=== {_now()} {' '.join(command)}\n")
        handle.flush()
        env = dict(os.environ)
        if self.threads:
            # torch reads these at import: one stage's threads do not steal another's cores
            env.update(OMP_NUM_THREADS=str(self.threads), MKL_NUM_THREADS=str(self.threads))
        record = self._record(job)
        record.update(status="running", started=_now(), command=command, log=str(path))
        record["attempts"] += 1
        self._write_state()
        self.log(f"start   {job.name}" + (" (resuming)" if "--resume" in command else ""))
        proc = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env)
        return job, proc, time.time(), handle

    def _progress(self, job: Job, started: float) -> str:
        text = f"{job.name} {_minutes(time.time() - started)}"
        if job.kind == "train":
            step = _last_step(self.run_dir(job.stage) / "metrics.jsonl")
            if step is not None:
                text += f" step {step}"
        return text

    def _report(self, job: Job) -> None:
        from .report import merged_report, write_comparison

        record = self._record(job)
        if not merged_report(self)["results"]:   # an empty table would read as a result
            record.update(status="failed", finished=_now())
            self.log("report  not written: no evaluation finished (see the FAILED lines above)")
            return
        files = write_comparison(self)
        record.update(status="done", finished=_now(), files=files)
        self.log(f"report  {files['markdown']}")


def _args_for(args: list, suites: list) -> list:
    """The plan's extra eval arguments without the ``--set SUITE.KEY=VALUE`` of suites this model is not scored
    on (``minillm eval`` refuses a --set for a suite it does not run)."""
    kept, rest = [], list(args)
    while rest:
        flag = rest.pop(0)
        if flag == "--set" and rest:
            value, pieces = rest[0], [flag, rest.pop(0)]
        elif flag.startswith("--set="):
            value, pieces = flag[len("--set="):], [flag]
        else:
            kept.append(flag)
            continue
        if value.split(".", 1)[0] in suites:
            kept += pieces
    return kept


def _catch_stop_signals() -> dict:
    """Ctrl-C and SIGTERM both stop the comparison cleanly. Installed explicitly: a driver started in the
    background (nohup, `&`) inherits an ignored SIGINT, and a scheduler's stop is SIGTERM."""

    def stop(signum, frame):
        raise KeyboardInterrupt

    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[signum] = signal.signal(signum, stop)
        except ValueError:   # not the main thread: leave the signals alone
            pass
    return previous


def _has_checkpoint(run: Path) -> bool:
    from ..training.checkpoint import list_checkpoints, verify_checkpoint

    return run.is_dir() and any(verify_checkpoint(p, full=False) is None for p in list_checkpoints(run))


def _last_step(metrics: Path) -> Optional[int]:
    try:
        with open(metrics, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 4096))
            lines = handle.read().decode("utf-8", "replace").strip().splitlines()
        return int(json.loads(lines[-1])["step"]) if lines else None
    except (OSError, ValueError, KeyError, IndexError):
        return None


def _last_line(path: Path) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "(no log)"
    errors = [ln for ln in lines if ln.startswith("error:")]
    return (errors or lines or ["(empty log)"])[-1]


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
