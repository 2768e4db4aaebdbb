"""Peers the benchmarks measure pyswarm against, run on this machine (docker_lab: a
multi-node Docker Swarm in network namespaces)."""
