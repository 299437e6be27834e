"""Partitions on several hosts (issue 15): each host's fabric moves records between hosts with
MPI one-sided communication. See docs/cluster.md."""
