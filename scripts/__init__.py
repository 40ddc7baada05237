"""gridrl's command-line entry points (``gridrl`` / ``python -m scripts``)."""
