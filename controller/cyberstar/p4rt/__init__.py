"""P4Runtime: conversions between the spec's entries and P4Runtime messages, and a client."""
