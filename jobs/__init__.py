"""What runs on a compute node: train, transfer, export and infer jobs.

A job is a function of its spec; it reports only through its reporter.
"""
