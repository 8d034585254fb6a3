"""Command-line layer: parses arguments, calls library functions, prints results."""
