"""``python -m minillm_cli``: the same as the ``minillm`` command."""

from .cli import main

main()
