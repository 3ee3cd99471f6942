"""The pipeline spec (the single source of truth) and the values and entries it accepts."""
