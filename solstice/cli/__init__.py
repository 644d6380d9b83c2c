"""Command-line entry points: the only place that prints for humans or picks an exit status."""
