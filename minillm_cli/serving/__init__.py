"""A teacher behind a server: ``minillm serve`` and its client, over the OpenAI-compatible completions API."""
