"""Reports: where they may be written, and writing them as JSON or a self-contained HTML page."""
