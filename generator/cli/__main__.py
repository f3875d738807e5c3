"""`python -m generator.cli ...` is the `synthgen` command."""
from generator.cli.main import main

main()
