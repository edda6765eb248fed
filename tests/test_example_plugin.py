"""The example plugin under plugins/ loads through its entry point and its family resolves a real model."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PLUGIN = REPO / "plugins" / "minillm-phi3"


def _installed_like(tmp_path: Path) -> Path:
    """A dist-info for the example plugin, as pip would write it, pointing at the plugin's source."""
    info = tmp_path / "minillm_phi3-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: minillm-phi3\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("[minillm]\nphi3 = minillm_phi3\n")
    return tmp_path


def test_example_plugin_registers_phi3_and_resolves_a_phi3_model(tmp_path):
    import transformers

    from minillm_cli.testing import make_tiny_tokenizer

    site = _installed_like(tmp_path / "site")
    model_dir = tmp_path / "tiny-phi3"
    config = transformers.Phi3Config(
        vocab_size=384, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=256, pad_token_id=0, bos_token_id=0, eos_token_id=0,
    )
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(model_dir)
    make_tiny_tokenizer().save_pretrained(model_dir)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(PLUGIN), str(REPO)]), "HF_HUB_OFFLINE": "1"}
    listing = subprocess.run([sys.executable, "-m", "minillm_cli", "plugins", "--json"], capture_output=True, text=True, env=env, timeout=120)
    assert listing.returncode == 0, listing.stderr
    data = json.loads(listing.stdout)
    assert {"name": "phi3", "version": "0.1.0", "hooks": ["register_model_families"]} in data["plugins"]
    assert "phi3" in data["model_families"]
    code = (
        "from minillm_cli.models import resolve_model, load_model; import sys\n"
        f"ref = resolve_model({str(model_dir)!r}); assert ref.family.name == 'phi3', ref.family.name\n"
        "assert resolve_model('phi3-mini').source == 'microsoft/Phi-3-mini-4k-instruct'\n"
        "load_model(ref); print('ok')\n"
    )
    resolved = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert resolved.returncode == 0 and resolved.stdout.strip() == "ok", resolved.stderr
