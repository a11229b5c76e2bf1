"""The library under the jobs: opening a job (job.py), config → components (components.py), batches on the device
(device.py), the training run (training.py) and its objective (objective.py), inference over any checkpoint or
export (inference.py), and the export forms (export.py, onnx.py). Applications call it; it never imports them."""
