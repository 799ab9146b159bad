"""``python -m lbcore.cli`` (e.g. under ``accelerate launch`` or ``torchrun``): the ``lbind`` command."""

from lbcore.cli import main

main()
