"""himalaya's ridge solvers as the baselines and decoders use them: one penalty per voxel, or per modality and voxel.

Both fit the voxels a chunk at a time with the numpy backend in float32 and keep only the
predictions and the chosen penalties, so a whole brain fits in bounded memory.
"""

from __future__ import annotations

import numpy as np

DEFAULT_ALPHAS = np.logspace(0, 6, 13)


def ridge_cv_predict(X_fit: np.ndarray, Y_fit: np.ndarray, X_pred: np.ndarray, alphas=DEFAULT_ALPHAS, cv=5,
                     solver: str = "auto", voxel_chunk: int = 16384) -> tuple[np.ndarray, np.ndarray, dict]:
    """Fit himalaya ridge with one alpha per target column by CV, predict ``X_pred``.

    ``X_fit (n, q)``, ``Y_fit (n, V)``, ``X_pred (m, q)`` -> ``(pred (m, V) float32, best_alphas (V,),
    info)``. Numpy backend, float32, intercept fitted (``fit_intercept=True``). ``solver``:
    ``"primal"`` (``himalaya.ridge.RidgeCV``, SVD solver), ``"kernel"`` (``KernelRidgeCV`` with a
    linear kernel: same estimator, cheaper when q > n), or ``"auto"`` (kernel when q > n). ``cv``:
    an int (KFold without shuffling) or a list of ``(train_rows, val_rows)`` (see ``blocked_cv``).
    The voxels are fitted ``voxel_chunk`` at a time; only predictions and alphas are kept, so memory
    stays bounded for 70k voxels. The CV score is himalaya's default (negative squared error).
    """
    from himalaya.backend import set_backend
    from himalaya.kernel_ridge import KernelRidgeCV
    from himalaya.ridge import RidgeCV

    set_backend("numpy", on_error="raise")
    X_fit, X_pred = np.ascontiguousarray(X_fit, np.float32), np.ascontiguousarray(X_pred, np.float32)
    Y_fit = np.asarray(Y_fit, np.float32)
    alphas = np.asarray(alphas, np.float32)
    if solver == "auto":
        solver = "kernel" if X_fit.shape[1] > X_fit.shape[0] else "primal"
    if solver not in ("primal", "kernel"):
        raise ValueError(f"solver must be 'auto', 'primal' or 'kernel', not {solver!r}")
    if not isinstance(cv, int):
        cv = [(np.asarray(a), np.asarray(b)) for a, b in cv]
    n_vox = Y_fit.shape[1]
    pred = np.empty((len(X_pred), n_vox), np.float32)
    best = np.empty(n_vox, np.float32)
    for start in range(0, n_vox, voxel_chunk):
        stop = min(start + voxel_chunk, n_vox)
        if solver == "kernel":
            model = KernelRidgeCV(alphas=alphas, kernel="linear", fit_intercept=True, cv=cv)
        else:
            model = RidgeCV(alphas=alphas, fit_intercept=True, cv=cv, solver="svd")
        model.fit(X_fit, np.ascontiguousarray(Y_fit[:, start:stop]))
        pred[:, start:stop] = np.asarray(model.predict(X_pred), np.float32)
        best[start:stop] = np.asarray(model.best_alphas_, np.float32)
    return pred, best, {"solver": solver, "n_fit": len(X_fit), "n_features": X_fit.shape[1],
                        "alphas": alphas.tolist()}


def banded_ridge_predict(X_fit: np.ndarray, Y_fit: np.ndarray, X_pred: np.ndarray, groups: np.ndarray,
                         alphas=DEFAULT_ALPHAS, cv=5, n_iter: int = 20, voxel_chunk: int = 65536,
                         random_state: int = 0) -> tuple[np.ndarray, np.ndarray, dict]:
    """Banded ridge: one penalty per feature group (modality) and per voxel, chosen by CV.

    himalaya's ``BandedRidgeCV`` (random search over the simplex of group scalings, ``n_iter``
    candidates, each with every alpha in ``alphas``). ``X_fit (n, q)``, ``Y_fit (n, V)``, ``X_pred
    (m, q)``, ``groups (q,)`` int group of each column -> ``(pred (m, V) float32, deltas (n_groups, V)
    float32, info)``: ``deltas`` are himalaya's log group scalings (``exp(deltas[g]) / alpha`` is the
    weight of group g; a group the CV finds useless gets a very negative delta). Every voxel gets its
    own scalings, so a visual voxel can ignore the text features and a language voxel the frames.
    Numpy backend, float32, intercept fitted, ``voxel_chunk`` voxels per fit: each fit costs
    ``n_iter * n_folds`` decompositions of ``X_fit`` whatever its voxel count (himalaya batches the
    voxels inside), so the default fits a 4 mm brain at once.
    """
    from himalaya.backend import set_backend
    from himalaya.ridge import BandedRidgeCV

    set_backend("numpy", on_error="raise")
    X_fit, X_pred = np.ascontiguousarray(X_fit, np.float32), np.ascontiguousarray(X_pred, np.float32)
    Y_fit = np.asarray(Y_fit, np.float32)
    groups = np.asarray(groups, dtype=np.int64)
    if groups.shape != (X_fit.shape[1],):
        raise ValueError(f"groups must give one group per feature column ({X_fit.shape[1]}), got {groups.shape}")
    if not isinstance(cv, int):
        cv = [(np.asarray(a), np.asarray(b)) for a, b in cv]
    n_groups, n_vox = int(groups.max()) + 1, Y_fit.shape[1]
    pred = np.empty((len(X_pred), n_vox), np.float32)
    deltas = np.empty((n_groups, n_vox), np.float32)
    params = {"n_iter": n_iter, "alphas": np.asarray(alphas, np.float32), "progress_bar": False,
              "n_targets_batch": 2048, "n_targets_batch_refit": 2048}
    for start in range(0, n_vox, voxel_chunk):
        stop = min(start + voxel_chunk, n_vox)
        model = BandedRidgeCV(groups=groups, solver="random_search", solver_params=params, fit_intercept=True,
                              cv=cv, random_state=random_state)
        model.fit(X_fit, np.ascontiguousarray(Y_fit[:, start:stop]))
        pred[:, start:stop] = np.asarray(model.predict(X_pred), np.float32)
        deltas[:, start:stop] = np.asarray(model.deltas_, np.float32)
    return pred, deltas, {"solver": "banded", "n_fit": len(X_fit), "n_features": X_fit.shape[1],
                          "n_groups": n_groups, "n_iter": n_iter, "alphas": np.asarray(alphas).tolist()}
