"""`python -m generator ...` is the `synthgen` command."""
from generator.cli.main import main

main()
