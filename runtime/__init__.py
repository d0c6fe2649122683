"""Runtime: knows model families and executes offload plans.

Importing this package touches nothing heavy; torch is imported by the modules that need it.
"""
