"""The tools around the light core: measuring, pruning, evaluating, exporting, serving adapters.

Modules here may import heavy third-party packages (torch_pruning, lpips, torchmetrics,
lightning, modelscope, onnx), lazily inside the functions that need them, except ``predict``,
which builds on Lightning's classes and imports it at the top (only the CLI's distributed path
imports ``predict``, lazily). Importing ``dctnet_lite`` never imports this subpackage. The light core (model families, the registry,
checkpoint IO, images, inference, the file pipeline, the cache) lives one level up.
"""
