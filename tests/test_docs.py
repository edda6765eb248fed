"""The documentation under docs/ is true: every command on its pages runs, every documented error is the real one,
the plugin walk-through builds a working plugin, and the CLI reference is the one the code generates.

How the commands run. Every line of a ```bash block is a command. `minillm …` commands run in-process, page by
page in order, in a fresh directory, on tiny random-init models instead of the real ones, and with overrides that
make them take seconds (see ``tiny_argv``: a full `minillm distill` becomes two optimizer steps on tiny models,
`minillm eval` two prompts and one seed unless the page asks otherwise). A ```text block that starts with
``error:`` right after a ```bash block is the message its last command must fail with (``…`` stands for any
text). The few commands that are not run are listed in ``NOT_RUN`` with the reason. The walk-through on
docs/writing-plugins.md is extracted into a package (blocks marked ``file=PATH``), really pip-installed (into a
directory of its own instead of the shared environment), run, and its own tests run.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import threading
import types
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Optional

import pytest
from conftest import REPO, run_cli

from minillm_cli.pytest_plugin import (
    TINY_DISTILL,
    TINY_EVAL,
    TINY_RECORDS,
    env_with,
    pip_install,
    write_tiny_data,
)

DOCS = REPO / "docs"
WALKTHROUGH = "writing-plugins.md"

# Commands shown on the pages that are not run here, and why.
NOT_RUN = {
    "bash scripts/setup": "makes the environment these tests run in (.venv, CPU torch, pip install -e .); CI runs it first",
    ". .venv/bin/activate": "the tests already run inside that environment",
    # docs/scaling.md: machines this test does not have (tests/test_distributed.py runs the same paths on CPUs).
    "minillm distill --recipe llama/13b_to_7b_MiniLLM --num-processes 8 --num-machines 2 --machine-rank 0 "
    "--main-process-ip 10.0.0.1 --main-process-port 29500": "needs two machines with 8 GPUs each",
    "minillm distill --recipe llama/13b_to_7b_MiniLLM --num-processes 8 --num-machines 2 --machine-rank 1 "
    "--main-process-ip 10.0.0.1 --main-process-port 29500": "needs two machines with 8 GPUs each",
    "torchrun --nproc_per_node 8 --nnodes 2 --node_rank 0 --master_addr 10.0.0.1 --master_port 29500 -m minillm_cli "
    "distill --recipe llama/13b_to_7b_MiniLLM": "needs two machines with 8 GPUs each",
    "accelerate launch --multi_gpu --num_processes 8 -m minillm_cli distill --recipe llama/13b_to_7b_MiniLLM":
        "needs 8 GPUs",
    "deepspeed --num_gpus 8 --module minillm_cli distill --recipe llama/13b_to_7b_MiniLLM --engine deepspeed "
    "--zero-stage 2": "needs 8 GPUs",
    "minillm distill --recipe llama/13b_to_7b_MiniLLM --num-processes 8 --teacher-shard zero3 "
    "train.teacher_dtype=bf16": "needs 8 GPUs",
    "pip install 'minillm[scale]'": "scripts/setup installs the scale extra for these tests",
    "minillm compare --plan smollm2_dolly --data-dir data":
        "runs for about two hours on 2 cores; tests/test_compare.py runs the same plan on tiny models",
    "minillm compare --plan smollm2_dolly_converged --data-dir data":
        "runs for about two and a half hours on 2 cores; tests/test_compare.py runs the same plan on tiny models",
    # docs/serving.md: servers run until stopped; the page's distill commands run against `minillm serve` on a
    # tiny teacher (setup_page), and tests/test_serving.py starts the serve command itself.
    "TEACHER_KEY=change-me minillm serve HuggingFaceTB/SmolLM2-1.7B-Instruct --host 0.0.0.0 --port 8000 --dtype bf16 "
    "--api-key-env TEACHER_KEY": "serves until stopped",
    "vllm serve HuggingFaceTB/SmolLM2-1.7B-Instruct --port 8000 --max-logprobs 64 --api-key change-me":
        "needs vLLM and a GPU",
    # docs/convert.md: inputs these tests do not make here (tests/test_convert.py converts tiny ones of each kind).
    "minillm convert smollm2": "converts the real SmolLM2-135M GGUF; tests/test_e2e_smollm2_convert.py runs it",
    "minillm convert gguf model.gguf out/": "needs a GGUF file; tests/test_convert.py converts tiny ones",
    "minillm convert zero runs/x/checkpoints/step-000100 hf/": "needs a DeepSpeed run; tests/test_distributed.py converts one",
    "minillm convert merge-lora runs/lora/final merged/": "needs a LoRA run; tests/test_lora.py merges one",
    # docs/performance.md: benchmarks that install TRL and run for an hour or more on real models.
    "pip install -e '.[bench]'": "installs the benchmark's peer (TRL); not a test",
    "pip install --target /tmp/trl-1.14.2 --no-deps trl==1.14.2": "installs an older TRL for its MiniLLMTrainer; not a test",
    "python bench/vs_trl.py --trl-minillm-path /tmp/trl-1.14.2": "a benchmark of real models (hours)",
    "python bench/rollout_speed.py": "a benchmark of the real SmolLM2 models",
    "python bench/distill_step.py": "a benchmark of every objective on real models",
}


# --- reading the pages ------------------------------------------------------------------------------------------


@dataclass
class Block:
    lang: str
    attrs: dict
    body: str


@dataclass
class Command:
    text: str                       # as written on the page
    argv: list
    env: dict = field(default_factory=dict)
    error: Optional[str] = None     # the documented error line, when it must fail


def blocks(page: Path) -> list:
    found = []
    for match in re.finditer(r"^```(\S*)([^\n]*)\n(.*?)^```[ \t]*$", page.read_text(encoding="utf-8"), re.M | re.S):
        attrs = dict(re.findall(r"(\w+)=(\S+)", match.group(2)))
        found.append(Block(match.group(1), attrs, match.group(3)))
    return found


def commands(page: Path) -> list:
    """The commands of a page's bash blocks, each with the error it is documented to give, if any."""
    found: list = []
    page_blocks = blocks(page)
    for index, block in enumerate(page_blocks):
        if block.lang != "bash":
            continue
        block_commands = []
        for line in block.body.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if not words:
                continue
            env = {}
            while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
                key, _, value = words.pop(0).partition("=")
                env[key] = value
            block_commands.append(Command(line.split(" #")[0].strip(), words, env))
        following = page_blocks[index + 1] if index + 1 < len(page_blocks) else None
        if following is not None and following.lang == "text" and following.body.startswith("error:"):
            block_commands[-1].error = following.body.strip()
        found += block_commands
    return found


def documented_errors_without_command(page: Path) -> list:
    """``error:`` text blocks that follow no bash block (checked against the source instead)."""
    page_blocks = blocks(page)
    return [
        block.body.strip() for index, block in enumerate(page_blocks)
        if block.lang == "text" and block.body.startswith("error:") and (index == 0 or page_blocks[index - 1].lang != "bash")
    ]


def matches(documented: str, actual: str) -> bool:
    pattern = ".*?".join(re.escape(fragment) for fragment in documented.split("…"))
    return re.fullmatch(pattern, actual, re.S) is not None


def error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, f"expected one error line on stderr, got:\n{err}"
    return lines[0].strip()


# --- running them on tiny models --------------------------------------------------------------------------------


def tiny_argv(args: list, models: dict) -> list:
    """``minillm ARGS`` as the tests run it: real model names replaced by tiny models, runs made tiny.

    - model names on the pages (``smollm2-135m-instruct``, ``llama-7b``, …) become tiny random-init models with
      the same relationships (same tokenizer, different tokenizer, padded vocabulary);
    - `minillm distill` gets the tiny teacher when the page names none (the real default is SmolLM2-135M), the
      overrides of ``TINY_DISTILL`` before the page's own, and ``train.steps=2`` last (a page's longer run, e.g.
      ``train.steps=300``, runs two steps; a page's warm start, one); ``--device cuda`` runs on the CPU;
    - `minillm eval` gets ``TINY_EVAL`` (one seed, two prompts, four new tokens) before the page's own options;
    - `minillm generate` at most four new tokens.
    """
    args = [models.get(a, a) for a in args]
    args = ["cpu" if previous == "--device" and a.startswith("cuda") else a for previous, a in zip([None] + args, args)]
    command, rest = args[0], args[1:]
    if command == "distill":
        if "--resume" in rest:
            return ["distill", *rest, "--no-progress"]
        teacher = [] if "--teacher" in rest else ["--teacher", models["smollm2-135m-instruct"]]
        # a page's warm start runs one step (TINY_DISTILL turns the default job's off)
        warm = ["warm_start.steps=1"] if any(str(a).startswith("warm_start.steps=") for a in rest) else []
        return ["distill", *TINY_DISTILL, "--no-progress", *teacher, *rest, "train.steps=2", *warm]
    if command == "eval" and "--from-generations" not in rest:
        return ["eval", *TINY_EVAL, *rest]
    if command == "generate":
        return ["generate", "--max-new-tokens", "4", *rest]
    return args


@pytest.fixture(scope="module")
def doc_models(tiny_models, tmp_path_factory) -> dict:
    """The model names used on the pages -> tiny models with the same relationships."""
    from minillm_cli.testing import make_tiny_model, make_tiny_tokenizer

    teacher = tiny_models("llama", layers=3, seed=2)
    other = make_tiny_model(tmp_path_factory.mktemp("other") / "tiny-gpt2-other-tokenizer", "gpt2",
                            tokenizer=make_tiny_tokenizer(corpus=["zebra quantum xylophone"] * 5 + ["hello world"]))
    return {
        "smollm2-135m-instruct": str(teacher),
        "llama-7b": str(teacher),
        "gpt2-base": str(other),                                         # another tokenizer
        "qwen2.5-7b": str(tiny_models("qwen2", vocab_size=400)),         # the same tokenizer, padded logits
        "qwen2.5-0.5b": str(tiny_models("qwen2")),
        "student": str(tiny_models("llama", seed=1)),
    }


class FakeJudge:
    """An OpenAI-compatible endpoint that scores every response 7 and every gold response 8."""

    def __init__(self):
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                body = json.dumps({"choices": [{"message": {"role": "assistant", "content": "7 8"}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def setup_page(name: str, root: Path, models: dict, monkeypatch) -> None:
    """What a page assumes exists: the quick start's student, the user's data files, a data dir, a judge."""
    if name == "evaluation.md":
        shutil.copytree(models["student"], root / "runs" / "default" / "final")    # the quick start's student
    if name == "quickstart.md":
        write_tiny_data(root / "my_data.jsonl")
    if name == "evaluation.md":
        write_tiny_data(root / "my_test.jsonl")
        for suite in ("dolly", "selfinst"):
            write_tiny_data(root / "data" / suite / "test.jsonl")
        reviews = [("a wonderful film", 1), ("dull and slow", 0), ("lovely music", 1), ("a waste of time", 0)]
        write_tiny_data(root / "data" / "sst2" / "test.jsonl", [{"sentence": s, "label": l} for s, l in reviews])
        judge = FakeJudge()
        monkeypatch.setitem(models, "http://localhost:8000/v1", judge.url)
        monkeypatch.setenv("MINILLM_JUDGE_API_KEY", "test-key")
        return judge
    if name == "serving.md":   # the GPU box's server: `minillm serve` on the tiny teacher, on a free local port
        from minillm_cli.runs.serve import make_server

        server = make_server(models["smollm2-135m-instruct"], port=0, device="cpu")
        threading.Thread(target=server.serve_forever, daemon=True).start()
        monkeypatch.setitem(models, "http://gpu-box:8000/v1", server.url)
        return types.SimpleNamespace(close=lambda: (server.shutdown(), server.server_close()))
    if name in ("generate.md", "convert.md"):
        shutil.copytree(models["smollm2-135m-instruct"], root / "runs" / "default" / "final")
        shutil.copytree(models["smollm2-135m-instruct"], root / "out")   # what `minillm convert gguf` made
        write_tiny_data(root / "data.jsonl")
    if name == "recipes.md":   # the comparison plan's data, checked even by a dry run
        for file in ("dolly/valid.jsonl", "dolly/test.jsonl", "selfinst/test.jsonl"):
            write_tiny_data(root / "data" / file)
    if name == "troubleshooting.md":
        good = json.dumps(TINY_RECORDS[0])
        (root / "my_data.jsonl").write_text(good + "\n" + '{"instruction": "Add.", "input": "", "output": 4}\n')
        write_tiny_data(root / "one_example.jsonl", TINY_RECORDS[:1])
        (root / "data").mkdir()
    return None


RUN_PAGES = sorted(p.name for p in DOCS.glob("*.md") if p.name != WALKTHROUGH)


@pytest.mark.parametrize("name", RUN_PAGES)
def test_every_command_on_the_page_runs(name, doc_models, tmp_path, monkeypatch, capsys):
    page = DOCS / name
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MINILLM_HOME", str(tmp_path / "minillm-home"))
    judge = setup_page(name, tmp_path, doc_models, monkeypatch)
    try:
        for command in commands(page):
            if command.text in NOT_RUN:
                continue
            assert command.argv[0] == "minillm", f"{name}: '{command.text}' is neither run by this test nor in NOT_RUN"
            for key, value in command.env.items():
                monkeypatch.setenv(key, value)
            args = tiny_argv(command.argv[1:], doc_models)
            code, _, err = run_cli(capsys, *args)
            shown = f"{name}: `{command.text}` (run as: minillm {' '.join(map(str, args))})"
            if command.error is None:
                assert code == 0, f"{shown} failed:\n{err[-3000:]}"
            else:
                assert code == 2, f"{shown} should fail with: {command.error}\nbut gave {code}:\n{err[-3000:]}"
                actual = error_line(err)
                assert matches(command.error, actual), f"{shown}: the page says\n  {command.error}\nthe code says\n  {actual}"
    finally:
        if judge is not None:
            judge.close()


def _source_text() -> str:
    text = "\n".join(p.read_text(encoding="utf-8") for p in (REPO / "minillm_cli").rglob("*.py"))
    return re.sub(r"\"\s*\n\s*f?\"", "", text)      # implicit concatenation of string literals across lines


def test_errors_shown_without_a_command_are_in_the_code():
    """Errors that need a broken installation or a diverging run to show (tests/test_plugins.py and
    tests/test_faults_numerics.py trigger them) are checked piece by piece against the source."""
    source = _source_text()
    checked = 0
    for page in DOCS.glob("*.md"):
        for documented in documented_errors_without_command(page):
            for fragment in re.split(r"…|; |, ", documented.removeprefix("error: ")):
                fragment = fragment.strip(" ,()")
                if len(fragment) >= 12:
                    assert fragment in source, f"{page.name}: '{fragment}' of\n  {documented}\nis not in the code"
                    checked += 1
    assert checked >= 6


def test_the_pages_account_for_every_command():
    """Each command is run here or listed in NOT_RUN; NOT_RUN lists only commands that are on a page."""
    texts = {c.text for p in DOCS.glob("*.md") for c in commands(p)}
    assert set(NOT_RUN) <= texts, set(NOT_RUN) - texts
    for page in DOCS.glob("*.md"):
        for command in commands(page):
            runnable = command.text in NOT_RUN or command.argv[0] == "minillm" or (
                page.name == WALKTHROUGH and command.argv[0] in ("pip", "pytest"))
            assert runnable, f"{page.name}: `{command.text}` is neither run nor listed in NOT_RUN"


# --- the plugin walk-through ------------------------------------------------------------------------------------

RUN_SCRIPT = """
import json, sys
from minillm_cli.cli import main
for argv in json.loads(sys.argv[1]):
    print("@@ minillm " + " ".join(argv), flush=True)
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    sys.stdout.flush()
    print(f"@@ exit {code}", flush=True)
"""


def test_the_plugin_walkthrough_builds_a_working_plugin(doc_models, tmp_path):
    """docs/writing-plugins.md, followed to the letter: its files make a package; `pip install -e .` becomes a real
    ``pip install --target`` (into its own directory, so the shared environment is left alone; not editable: that
    needs the environment's site-packages); its `minillm` commands run on tiny models (one subprocess that sees the
    installed package); `pytest` runs the package's tests."""
    page = DOCS / WALKTHROUGH
    package = tmp_path / "minillm-jeffreys"
    files: dict = {}
    for block in blocks(page):
        if "file" in block.attrs:
            files[block.attrs["file"]] = files.get(block.attrs["file"], "") + block.body + "\n"
    assert set(files) == {"pyproject.toml", "minillm_jeffreys.py", "tests/test_jeffreys.py"}
    for name, text in files.items():
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text(text, encoding="utf-8")
    site = tmp_path / "site"
    env = env_with(site, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
                   MINILLM_HOME=str(tmp_path / "minillm-home"))
    pending: list = []
    ran = []

    def run_pending():
        if not pending:
            return
        result = subprocess.run([sys.executable, "-c", RUN_SCRIPT, json.dumps(pending)], capture_output=True,
                                text=True, env=env, cwd=package, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        codes = re.findall(r"^@@ exit (\d+)$", result.stdout, re.M)
        assert codes == ["0"] * len(pending), result.stdout[-3000:] + result.stderr[-3000:]
        ran.append(result.stdout)
        pending.clear()

    for command in commands(page):
        if command.argv[:2] == ["pip", "install"]:
            assert command.argv[2:] == ["-e", "."], command.text
            pip_install([package], site)
            ran.append("pip")
        elif command.argv[0] == "minillm":
            pending.append([str(a) for a in tiny_argv(command.argv[1:], doc_models)])
        elif command.argv == ["pytest"]:
            run_pending()
            result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], capture_output=True,
                                    text=True, env=env, cwd=package, timeout=600)
            assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
            assert re.search(r"\b2 passed\b", result.stdout), result.stdout[-2000:]
            ran.append("pytest")
        else:
            raise AssertionError(f"{WALKTHROUGH}: `{command.text}` is not part of the walk-through")
    run_pending()
    output = "\n".join(ran)
    assert ran[0] == "pip" and ran[-1] == "pytest"
    assert "jeffreys" in output and "perplexity" in output and "Symmetric KL" in output


def test_plugin_snippets_register(register_plugin):
    """The page's smaller snippets (a model family, a command) are valid plugins too."""
    import typer

    from minillm_cli import plugins

    snippets = [b.body for b in blocks(DOCS / WALKTHROUGH) if b.lang == "python" and "file" not in b.attrs]
    assert len(snippets) == 2
    for index, code in enumerate(snippets):
        module = types.ModuleType(f"snippet_{index}")
        exec(compile(code, f"{WALKTHROUGH} snippet {index}", "exec"), module.__dict__)
        if hasattr(module, "register_commands"):
            app = typer.Typer()
            module.register_commands(cli=app)
            assert [c.callback.__name__ for c in app.registered_commands] == ["hello"]
        else:
            register_plugin(module, f"snippet-{index}")
            plugins.validate()
            assert plugins.get_family("phi3").aliases == {"phi3-mini": "microsoft/Phi-3-mini-4k-instruct"}


# --- the reference and the links -------------------------------------------------------------------------------


def test_cli_reference_is_current():
    from minillm_cli.cli.reference import render

    assert (DOCS / "cli.md").read_text(encoding="utf-8") == render(), (
        "docs/cli.md is stale: regenerate it with `python -m minillm_cli.cli.reference > docs/cli.md`"
    )


def test_cli_reference_script_runs():
    result = subprocess.run([sys.executable, "-m", "minillm_cli.cli.reference"], capture_output=True, text=True,
                            cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("# CLI reference") and "## `minillm distill`" in result.stdout


def test_readme_and_index_link_every_page_and_every_link_resolves():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    index = (DOCS / "index.md").read_text(encoding="utf-8")
    for page in DOCS.glob("*.md"):
        assert f"docs/{page.name}" in readme, f"README.md does not link docs/{page.name}"
        if page.name != "index.md":
            assert f"({page.name})" in index, f"docs/index.md does not link {page.name}"
    for page in [REPO / "README.md", *DOCS.glob("*.md")]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text(encoding="utf-8")):
            if "://" in target:
                continue
            assert (page.parent / target).exists(), f"{page.name} links to {target}, which does not exist"
