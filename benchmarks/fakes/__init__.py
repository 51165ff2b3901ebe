"""Stand-ins the benchmarks (and the tests) run on loopback: a TMDB-compatible site and the object
store and database servers (``servers``)."""
