"""The shared core: errors, the case model, fields, models, results, the runner table, the oracles. Imports no stage."""
