"""The ``cst-neuro`` command line (typer); each command is a thin shell over the library."""
