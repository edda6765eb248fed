"""Pytest fixtures for people who write minillm plugins (and for minillm's own tests).

Installed with minillm and registered through the ``pytest11`` entry point, so a plugin package's tests can use
them without any import or ``conftest.py`` (``pytest -p no:minillm`` switches them off). Everything is built
offline in seconds; importing this module does not import torch.

Fixtures:

``minillm_tiny_models`` (session)
    ``get(family="llama", **kwargs) -> Path``: a tiny random-init model of a builtin family saved as a Hugging
    Face directory (``minillm_cli.testing.make_tiny_model``; kwargs such as ``layers=3, seed=2``), built once
    per session per distinct arguments.
``minillm_teacher_student`` (session)
    ``TeacherStudent(teacher, student)``: directories of a 3-layer teacher and a 2-layer student (llama family)
    that share one tokenizer, ready for ``minillm distill --teacher T --student S``.
``minillm_tiny_data`` (session)
    A JSONL file of 16 instruction/input/output records, for ``data.train=PATH`` or ``minillm eval --suite PATH``.
``minillm_home`` (function)
    An empty ``MINILLM_HOME`` for one test (students cut from teachers, SeqKD caches go there, not to ~/.cache).
``minillm_plugin`` (function)
    ``register(plugin=None, name=None, *, objectives=(), evaluators=(), families=())``: registers a plugin object
    (a module, or any object with ``@hookimpl`` functions), or builds one from classes, for the duration of one
    test; it is unregistered afterwards. A plugin already loaded (installed, through its entry point) is left as
    it is, so the same test passes before and after ``pip install -e .``.
``minillm_run`` (function)
    ``run(*args) -> CliResult(exit_code, stdout, stderr)``: the ``minillm`` command line, in-process.

Constants: ``TINY_DISTILL`` (``key=value`` overrides that make ``minillm distill`` take seconds on tiny models)
and ``TINY_EVAL`` (options that do the same for ``minillm eval``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path
from typing import Iterable, NamedTuple, Optional, Sequence

import pytest

# Overrides that make `minillm distill` run in a second or two on tiny models: two optimizer steps of two
# sequences, short validation and sampling. (student_layers matters only when the student is cut from the teacher.)
TINY_DISTILL = (
    "student_layers=2",
    "warm_start.steps=0",
    "train.steps=2",
    "train.batch_size=2",
    "eval.rouge_examples=2",
    "eval.max_examples=4",
    "eval.max_new_tokens=4",
    "generation.max_new_tokens=6",
    "data.limit=40",
    "data.max_prompt_tokens=512",
)

# Options that make `minillm eval` take seconds: one seed, two prompts, four new tokens, no plots.
TINY_EVAL = ("--seeds", "10", "--limit", "2", "--max-new-tokens", "4", "--batch-size", "2", "--no-plots")

TINY_RECORDS = [
    {"instruction": "Name the capital of France.", "input": "", "output": "The capital of France is Paris."},
    {"instruction": "Name the capital of Italy.", "input": "", "output": "The capital of Italy is Rome."},
    {"instruction": "Add the numbers.", "input": "two plus two", "output": "Two plus two is four."},
    {"instruction": "List three colours.", "input": "", "output": "red, green, blue"},
    {"instruction": "Is this review positive or negative?", "input": "The film was wonderful.", "output": "positive"},
    {"instruction": "Is this review positive or negative?", "input": "The music was dull.", "output": "negative"},
    {"instruction": "At what temperature does water boil?", "input": "", "output": "One hundred degrees Celsius at sea level."},
    {"instruction": "What are cats and dogs?", "input": "", "output": "Cats and dogs are animals."},
    {"instruction": "Rewrite the sentence in plain words.", "input": "The film was lovely.", "output": "The film was nice."},
    {"instruction": "Count from one to three.", "input": "", "output": "1 2 3"},
    {"instruction": "Say hello.", "input": "", "output": "Hello!"},
    {"instruction": "Name a colour.", "input": "", "output": "blue"},
    {"instruction": "What is two plus two?", "input": "", "output": "four"},
    {"instruction": "Complete the sentence.", "input": "The capital of France is", "output": "Paris."},
    {"instruction": "Name an animal.", "input": "", "output": "A cat."},
    {"instruction": "Write the letters a to e.", "input": "", "output": "a b c d e"},
]


class TeacherStudent(NamedTuple):
    teacher: Path
    student: Path


class CliResult(NamedTuple):
    exit_code: int
    stdout: str
    stderr: str


# --- helpers usable without pytest fixtures ------------------------------------------------------------------


def run_cli(capsys, *args) -> CliResult:
    """Run ``minillm ARGS`` in-process with pytest's ``capsys``: (exit status, stdout, stderr).

    A ``MinillmError`` gives exit status 2 and its one line on stderr, exactly as in a shell."""
    from .cli import main

    capsys.readouterr()
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out, err = capsys.readouterr()
    return CliResult(code, out, err)


@contextlib.contextmanager
def registered_plugin(plugin=None, *, name: Optional[str] = None, objectives: Iterable = (),
                      evaluators: Iterable = (), families: Iterable = ()):
    """Register a plugin with minillm's plugin manager inside a ``with`` block; unregister it afterwards.

    ``plugin`` is a module or any object with ``@hookimpl`` functions; alternatively ``objectives``,
    ``evaluators`` and ``families`` (classes / ``ModelFamily`` objects) are wrapped in a plugin made here. A
    plugin that is already registered (loaded through its installed entry point) is left registered.
    """
    from .hookspecs import hookimpl
    from .plugins import load_plugins, pm

    load_plugins()
    if plugin is None:
        plugin = types.SimpleNamespace()
        for hook, items in (("register_objectives", objectives), ("register_evaluators", evaluators),
                            ("register_model_families", families)):
            items = list(items)
            if items:
                setattr(plugin, hook, _register_all(hookimpl, items))
    elif objectives or evaluators or families:
        raise TypeError("pass either a plugin object or objectives=/evaluators=/families=, not both")
    if pm.is_registered(plugin):
        yield plugin
        return
    pm.register(plugin, name=name)
    try:
        yield plugin
    finally:
        if pm.is_registered(plugin):
            pm.unregister(plugin)


def _register_all(hookimpl, items):
    @hookimpl
    def register(register):
        for item in items:
            register(item)

    return register


def write_tiny_data(path: Path, records: Sequence[dict] = TINY_RECORDS) -> Path:
    """Write instruction records as JSONL (one object per line); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def pip_install(projects: Sequence[os.PathLike], target: os.PathLike) -> Path:
    """``pip install --target TARGET`` the given project directories, without dependencies or network.

    The projects are copied first (pip writes build/ and *.egg-info into the source tree), so the sources stay
    clean. The result is a real installation, entry points included, that the current environment sees only
    where ``target`` is on the path: ``env_with(target)`` gives subprocesses such an environment.
    """
    target = Path(target)
    staging = target.parent / f"{target.name}-sources"
    copies = []
    for project in projects:
        project = Path(project)
        copy = staging / project.name
        shutil.copytree(project, copy, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", ".pytest_cache"))
        copies.append(str(copy))
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
               "--no-build-isolation", "--no-index", "--target", str(target), *copies]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        raise RuntimeError(f"pip install failed ({' '.join(command)}):\n{result.stdout}\n{result.stderr}")
    return target


def env_with(*paths: os.PathLike, **extra: str) -> dict:
    """``os.environ`` with ``paths`` in front of PYTHONPATH (and HF_HUB_OFFLINE=1), for subprocesses."""
    existing = os.environ.get("PYTHONPATH")
    python_path = os.pathsep.join([str(p) for p in paths] + ([existing] if existing else []))
    return {**os.environ, "PYTHONPATH": python_path, "HF_HUB_OFFLINE": "1", **extra}


# --- fixtures ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def minillm_tiny_models(tmp_path_factory):
    """``get(family="llama", **kwargs) -> Path``: a tiny random-init model directory, built once per session."""
    root = tmp_path_factory.mktemp("minillm-tiny-models")
    cache: dict = {}

    def get(family: str = "llama", **kwargs) -> Path:
        from .testing import make_tiny_model

        key = family + "".join(f"-{k}{v}" for k, v in sorted(kwargs.items()))
        if key not in cache:
            # The directory name carries the family name, as real checkpoints' names do (smollm2 is detected so).
            cache[key] = make_tiny_model(root / f"tiny-{key}", family, **kwargs)
        return cache[key]

    return get


@pytest.fixture(scope="session")
def minillm_teacher_student(minillm_tiny_models) -> TeacherStudent:
    """A 3-layer teacher and a 2-layer student of the llama family sharing one tokenizer."""
    return TeacherStudent(minillm_tiny_models("llama", layers=3, seed=2), minillm_tiny_models("llama", seed=1))


@pytest.fixture(scope="session")
def minillm_tiny_data(tmp_path_factory) -> Path:
    """A JSONL file of 16 instruction/input/output records."""
    return write_tiny_data(tmp_path_factory.mktemp("minillm-data") / "tiny.jsonl")


@pytest.fixture
def minillm_home(tmp_path, monkeypatch) -> Path:
    """An empty MINILLM_HOME for this test."""
    home = tmp_path / "minillm-home"
    home.mkdir()
    monkeypatch.setenv("MINILLM_HOME", str(home))
    return home


@pytest.fixture
def minillm_plugin():
    """``register(plugin=None, name=None, *, objectives=(), evaluators=(), families=())`` for one test."""
    with contextlib.ExitStack() as stack:

        def register(plugin=None, name: Optional[str] = None, **classes):
            return stack.enter_context(registered_plugin(plugin, name=name, **classes))

        yield register


@pytest.fixture
def minillm_run(capsys):
    """``run(*args) -> CliResult(exit_code, stdout, stderr)``: ``minillm ARGS`` in-process."""

    def run(*args) -> CliResult:
        return run_cli(capsys, *args)

    return run
