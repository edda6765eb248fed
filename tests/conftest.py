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
    from minillm_cli.cli import main

    capsys.readouterr()
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out, err = capsys.readouterr()
    return code, out, err


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


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """family -> directory of a tiny random-init model of that family, built once per session."""
    from minillm_cli.testing import make_tiny_model

    root = tmp_path_factory.mktemp("tiny-models")
    cache: dict[str, Path] = {}

    def get(family: str = "llama", **kwargs) -> Path:
        key = family + "".join(f"-{k}{v}" for k, v in sorted(kwargs.items()))
        if key not in cache:
            # The directory name carries the family name, as real checkpoints' names do (smollm2 is detected so).
            cache[key] = make_tiny_model(root / f"tiny-{key}", family, **kwargs)
        return cache[key]

    return get


@pytest.fixture
def register_plugin():
    """Register a plugin object for one test; unregistered afterwards."""
    from minillm_cli.plugins import load_plugins, pm

    load_plugins()
    added = []

    def register(plugin, name: str):
        pm.register(plugin, name=name)
        added.append(plugin)
        return plugin

    yield register
    for plugin in added:
        pm.unregister(plugin)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("shared/data is not present beside the project")
    return SHARED_DATA


# A tiny teacher/student pair sharing one tokenizer, for objective tests: (student ref, teacher ref).
@pytest.fixture(scope="module")
def refs(tiny_models):
    from minillm_cli.models import resolve_model

    return resolve_model(str(tiny_models("llama", seed=1))), resolve_model(str(tiny_models("llama", layers=3, seed=2)))


@pytest.fixture(scope="module")
def tokenizer(refs):
    from minillm_cli.models import load_tokenizer

    return load_tokenizer(refs[0])


@pytest.fixture(scope="module")
def teacher(refs):
    from minillm_cli.models import load_model

    return load_model(refs[1])


@pytest.fixture
def student(refs):
    import torch

    from minillm_cli.models import load_model

    torch.manual_seed(0)
    return load_model(refs[0], trainable=True)
