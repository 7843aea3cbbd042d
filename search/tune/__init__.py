"""The parts of one search, beneath the commands of `search`: what proposes configs and how."""
