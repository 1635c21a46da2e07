"""``python -m cicld.cli`` (and ``accelerate launch -m cicld.cli``) runs the command line."""

from cicld.cli import main

if __name__ == "__main__":
    main()
