"""The chain machinery: loading plugins, feature switches, running the admission and processing phases, and the in-process driver."""
