"""``python -m cst_neuro`` runs the command line."""

from cst_neuro._cli.app import main

main()
