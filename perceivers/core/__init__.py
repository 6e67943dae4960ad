"""The bottom layer: validation toolkit and config base, atomic files, the model registry tables.

Nothing here imports torch modules of the library or any other ``perceivers`` package.
"""
