"""Stage 3, judge: tolerance, comparison, attribution, expectations."""
