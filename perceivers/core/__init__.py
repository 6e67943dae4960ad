"""The bottom layer: validation toolkit and config base, atomic files, the model registry tables, and the AdamW
constructor that the training engine and the bench share (:mod:`perceivers.core.optim`, torch only).

Nothing here imports torch modules of the library or any other ``perceivers`` package.
"""
