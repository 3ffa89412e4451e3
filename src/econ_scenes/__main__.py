"""``python -m econ_scenes`` = ``econ`` (also what ``torchrun -m econ_scenes train`` runs)."""

from econ_scenes.cli import main

if __name__ == "__main__":
    main()
