"""``python -m connectomix.cli``: the same as the ``cx`` command."""

from connectomix.cli import main

main()
