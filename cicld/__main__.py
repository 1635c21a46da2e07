"""``python -m cicld`` runs the command line."""

from cicld.cli import main

if __name__ == "__main__":
    main()
