"""The transfer half of robust-transfer: datasets, source models, PGD, training and fine-tuning.

It knows nothing of ``interp``. The main entry points::

    from transfer.finetune import FinetuneConfig, finetune
    summary = finetune(FinetuneConfig(source="mnist5k-l2", target="digits", blocks="1",
                                      subset="500", epochs="10"), "runs/demo")
"""

__version__ = "0.1.0"
