"""`python -m api`: the server's command line (api/cli.py), as the `triton-serve` console script runs it."""

from api.cli import main

if __name__ == "__main__":
    main()
