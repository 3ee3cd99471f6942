"""The reference model: a pure-Python interpreter of the pipeline spec, the oracle for targets."""
