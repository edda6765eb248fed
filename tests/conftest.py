import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

# Prompt/response pairs for tiny training loops, and held-out prompts to measure them on.
TRAIN = [
    ("The capital of France is", " Paris."),
    ("List three colours:", " red, green, blue."),
    ("Two plus two is", " four."),
    ("Is this review positive?", " The film was wonderful."),
]
HELD_OUT = [
    ("The capital of Italy is", " Rome."),
    ("Water boils at", " one hundred degrees."),
    ("Cats and dogs are", " animals."),
]


def run_cli(capsys, *args):
    """Run ``minillm ARGS`` in-process: (exit status, stdout, stderr)."""
    from minillm_cli.pytest_plugin import run_cli as run

    return run(capsys, *args)


BUILTIN_FAMILIES = ["gpt2", "opt", "llama", "mistral", "qwen2", "gemma", "smollm2"]
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """The tests run tiny models on a 2-core machine often shared with other work: several OpenMP threads spin
    against each other there and make tiny matrix products ~10x slower, so every test runs single-threaded."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# The fixtures minillm ships to plugin authors (minillm_cli/pytest_plugin.py, the `pytest11` entry point "minillm")
# are minillm's own test fixtures too; the short names below are what the tests have always used.


def pytest_configure(config):
    if not config.pluginmanager.has_plugin("minillm"):   # not installed with its entry point: `pip install -e .`
        config.pluginmanager.import_plugin("minillm_cli.pytest_plugin")


@pytest.fixture(scope="session")
def tiny_models(minillm_tiny_models):
    """family -> directory of a tiny random-init model of that family, built once per session."""
    return minillm_tiny_models


@pytest.fixture
def register_plugin(minillm_plugin):
    """``register(plugin, name)``: register a plugin object for one test; unregistered afterwards."""
    return minillm_plugin


REPO = Path(__file__).resolve().parents[1]
EXAMPLE_PLUGINS = sorted(p for p in (REPO / "plugins").iterdir() if (p / "pyproject.toml").is_file())


@pytest.fixture(scope="session")
def example_plugins(tmp_path_factory):
    """Every example plugin under plugins/, installed once per session by a real ``pip install`` (no dependencies,
    no network) into a directory of its own, so the shared environment is left alone: ``.site`` is that directory,
    ``.env`` the environment in which subprocesses see the plugins (and their entry points), ``.projects`` their
    source directories."""
    import types

    from minillm_cli.pytest_plugin import env_with, pip_install

    site = pip_install(EXAMPLE_PLUGINS, tmp_path_factory.mktemp("plugins") / "site")
    env = env_with(site, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    return types.SimpleNamespace(site=site, env=env, projects=EXAMPLE_PLUGINS)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("shared/data is not present beside the project")
    return SHARED_DATA


# A tiny teacher/student pair sharing one tokenizer, for objective tests: (student ref, teacher ref).
@pytest.fixture(scope="module")
def refs(tiny_models):
    from minillm_cli.models.load import resolve_model

    return resolve_model(str(tiny_models("llama", seed=1))), resolve_model(str(tiny_models("llama", layers=3, seed=2)))


@pytest.fixture(scope="module")
def tokenizer(refs):
    from minillm_cli.models.load import load_tokenizer

    return load_tokenizer(refs[0])


@pytest.fixture(scope="module")
def teacher(refs):
    from minillm_cli.models.load import load_model

    return load_model(refs[1])


@pytest.fixture
def student(refs):
    import torch

    from minillm_cli.models.load import load_model

    torch.manual_seed(0)
    return load_model(refs[0], trainable=True)


@pytest.fixture(scope="session")
def served_teacher(tiny_models):
    """`minillm serve`'s server on the tiny llama teacher of ``refs`` (3 layers, seed 2), on a free port of
    127.0.0.1, answering from a thread for the whole session; ``.url`` is its API root."""
    import threading

    from minillm_cli.runs.serve import make_server

    server = make_server(str(tiny_models("llama", layers=3, seed=2)), port=0, device="cpu")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


@pytest.fixture(autouse=True)
def restore_the_interrupt_handler():
    """A command run in-process that stops for Ctrl-C ignores further ones (``cli.ignore_further_interrupts``):
    that must not outlive its test, or every process a later test starts inherits SIGINT ignored (an ignored
    signal survives exec, and Python then installs no KeyboardInterrupt handler) and never stops on Ctrl-C."""
    import signal

    handler = signal.getsignal(signal.SIGINT)
    yield
    if signal.getsignal(signal.SIGINT) is not handler:
        signal.signal(signal.SIGINT, handler)
