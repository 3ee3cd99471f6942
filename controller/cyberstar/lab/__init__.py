"""Lab helpers: namespaces, processes and topologies for tests, benchmarks and demos."""
