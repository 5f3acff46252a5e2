"""Stage 4, report: results.json and its journal, the baseline, the version matrix, the HTML report and repro bundles."""
