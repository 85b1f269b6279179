"""The `qconvert` command line: parses flags, builds configs, calls the library, renders results."""
