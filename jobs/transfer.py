"""The transfer job: ``python -m jobs.transfer --from TRAIN_JOB_DIR --dataset cifar100 ...``.

The same code path as training, starting from a training checkpoint with a new head.
"""

import sys

from jobs.train import main

if __name__ == "__main__":
    sys.exit(main(stage="transfer"))
