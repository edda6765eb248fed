"""An example third-party minillm plugin: the Phi-3 family, registered through the public hook."""

from minillm_cli import ModelFamily, hookimpl


@hookimpl
def register_model_families(register):
    register(
        ModelFamily(
            name="phi3",
            model_types=("phi3",),
            aliases={
                "phi3-mini": "microsoft/Phi-3-mini-4k-instruct",
                "phi3-medium": "microsoft/Phi-3-medium-4k-instruct",
            },
            prompt_format="chat",
            description="Phi-3 (example plugin)",
        )
    )
