"""`python -m rsctool` is the same as the `rsctool` console script."""

from rsctool.cli import main

if __name__ == "__main__":
    main()
