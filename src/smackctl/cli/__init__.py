"""The command line: one Typer sub-app per noun; ``app.py`` only assembles them."""
