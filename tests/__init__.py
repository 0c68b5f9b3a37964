"""The test suite (a package, so a dependency that installs a top-level `tests` package cannot shadow it)."""
