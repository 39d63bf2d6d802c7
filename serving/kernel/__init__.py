"""The config kernel: routing config, experiments, arms, targeting, transforms,
analysis plans, ids and patterns, and the error hierarchy.

It imports no other package of the project (a test holds it), so every layer
may build on it: the pure cores, the I/O adapters, the request path, the
control plane and the command line.
"""
