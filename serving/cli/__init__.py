"""The composition root: the ``rampart`` command line and the demo.

It wires the product packages together and nothing imports it back.
"""
