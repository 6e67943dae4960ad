"""preprocessors."""
