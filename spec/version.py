"""The version of dlspec, stamped on every graph it writes."""

__version__ = "0.1.0"
