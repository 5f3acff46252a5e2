"""Stage 1, load: YAML with line marks, grids, validation, frozen cases."""
