"""Benchmarks of the services (``postergenre bench ...``, docs/benchmarks.md): a package beside the
services, which may import them and ``shared``; of the services only ``services.cli`` imports it."""
