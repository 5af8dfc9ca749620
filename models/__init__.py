"""The MS-VLM model, its phantom data generator, training and evaluation.

Importable without the ``node`` package.
"""
