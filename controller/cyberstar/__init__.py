"""cyberstar: elastic, multi-tenant network functions on programmable data planes."""

__version__ = "0.1.0"
