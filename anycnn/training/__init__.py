"""The training room: the loop, the optimizers, checkpoints, plots and many processes.

- :mod:`anycnn.training.loop`: :func:`train`, :class:`Trainer` (the loop's seam: setup, epochs,
  steps, gradient hooks), :func:`evaluate`, the preprocessing a run records;
- :mod:`anycnn.training.optim`: SGD, momentum and LeCun's stochastic diagonal
  Levenberg-Marquardt (section 4.2), learning-rate schedules, the optimizer registry;
- :mod:`anycnn.training.checkpoint`: pickle-free ``.npz`` checkpoints, validated before any
  data is read, written atomically;
- :mod:`anycnn.training.plots`: learning curves, kernels and feature maps (matplotlib);
- :mod:`anycnn.training.distributed`: data parallelism over MPI (and NCCL), gradient averaging.

``anycnn.train``, ``anycnn.optim``, ``anycnn.checkpoint``, ``anycnn.plots`` and
``anycnn.distributed`` (the flat modules of 0.1) are these modules under their old names.
"""
