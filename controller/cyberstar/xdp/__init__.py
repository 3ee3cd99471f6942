"""The XDP target: generated program layouts, loading with BCC, map encoders, test runs."""
