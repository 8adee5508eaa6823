"""``python -m pipeline.app.cli``: the ``smtpgate`` command without the console script (tests, venvs)."""

from pipeline.app.cli import main

if __name__ == "__main__":  # imported as a module (by tools that walk the package), it runs nothing
    main()
