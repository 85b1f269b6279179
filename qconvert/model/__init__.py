"""The model: loading it with every check made before any work, its external data, walking its graphs,
and the files qconvert writes (atomically, beside the output)."""
