"""pcap files in and out, and the runner that pushes them through a target."""
