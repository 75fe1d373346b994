"""``python -m fiacli`` (also what ``torchrun -m fiacli train …`` runs)."""

from fiacli.cli import main

if __name__ == "__main__":
    main()
