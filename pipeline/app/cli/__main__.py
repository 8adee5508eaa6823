"""``python -m pipeline.app.cli``: the ``smtpgate`` command without the console script (tests, venvs)."""

from pipeline.app.cli import main

if __name__ == "__main__":  # the package imports every module of itself, this one included
    main()
