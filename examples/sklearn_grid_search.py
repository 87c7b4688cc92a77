"""scikit-learn's GridSearchCV with its fits running in Jupyter kernels (the joblib backend).

Run it from the repository root or from ``examples/`` (needs scikit-learn: ``pip install -e '.[examples]'``):

    python examples/sklearn_grid_search.py

scikit-learn parallelises with joblib; ``joblib.parallel_config(backend="datalayer")``
sends that work to the kernels of a DatalayerExecutor, without any change to the
scikit-learn code. Here two local kernels run the 9 candidates x 3 folds = 27 fits and
stop at the end of the block. With ``runtime_backend="jupyter", url=..., token=...`` (or
``runtime_backend="datalayer"``) the same fits run on a Jupyter Server or on Datalayer
cloud runtimes.
"""

import os
import sys
import time

try:
    import joblib
    from sklearn.datasets import load_digits
    from sklearn.model_selection import GridSearchCV
    from sklearn.svm import SVC
except ImportError:
    raise SystemExit("examples/sklearn_grid_search.py needs scikit-learn: pip install -e '.[examples]'")

try:
    from dlexec.joblib_backend import register_joblib
except ImportError:  # a source checkout that is not installed: use the repository's copy
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))
    from dlexec.joblib_backend import register_joblib

register_joblib()  # makes the "datalayer" joblib backend known to joblib (idempotent)


if __name__ == "__main__":
    X, y = load_digits(return_X_y=True)
    grid = {"C": [0.1, 1.0, 10.0], "gamma": ["scale", 1e-3, 1e-2]}
    search = GridSearchCV(SVC(), grid, cv=3, n_jobs=2)

    start = time.perf_counter()
    with joblib.parallel_config(backend="datalayer", n_jobs=2):  # two local kernels, reused by every fit
        search.fit(X, y)
    elapsed = time.perf_counter() - start  # includes starting the kernels and importing scikit-learn there
    print(f"27 fits on 2 kernels in {elapsed:.1f} s; the kernels are stopped")
    print("best parameters:", search.best_params_)
    print(f"best cross-validated accuracy: {search.best_score_:.3f}")
