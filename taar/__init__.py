"""TAAR shared library: artifacts, storage, hashing, profiles, eligibility, recommenders."""

__version__ = "0.1.0"
