"""Logistic regression with soft targets, per-row weights and a ridge penalty, fitted by damped Newton steps.

Small and dependency-free (numpy only); shared by the length-controlled win rate and Bradley-Terry."""
from __future__ import annotations

import numpy as np


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # numerically stable for large |z|


def _loss(X, y, w, coef, penalty):
    z = X @ coef
    # log(1 + e^z) - y z, stable form
    return float(np.sum(w * (np.logaddexp(0.0, z) - y * z)) + 0.5 * np.sum(penalty * coef ** 2))


def fit_logistic(X: np.ndarray, y: np.ndarray, *, weights: np.ndarray | None = None, l2: float = 0.0,
                 penalize: np.ndarray | None = None, max_iter: int = 100, tol: float = 1e-10) -> np.ndarray:
    """Coefficients minimising sum_i w_i * CE(y_i, sigmoid(X_i . coef)) + l2/2 * ||coef[penalize]||^2.

    `y` may be any value in [0, 1] (a judge's probability, 0.5 for a tie). `penalize` is a boolean mask of the
    coefficients the ridge applies to (default: all). A tiny jitter keeps the Hessian invertible when a column
    is constant or a player never loses."""
    X = np.asarray(X, dtype=float)
    y = np.asarray(y, dtype=float)
    w = np.ones(len(y)) if weights is None else np.asarray(weights, dtype=float)
    mask = np.ones(X.shape[1], dtype=bool) if penalize is None else np.asarray(penalize, dtype=bool)
    penalty = np.where(mask, l2, 0.0) + 1e-8
    coef = np.zeros(X.shape[1])
    loss = _loss(X, y, w, coef, penalty)
    for _ in range(max_iter):
        p = sigmoid(X @ coef)
        gradient = X.T @ (w * (p - y)) + penalty * coef
        hessian = (X * (w * p * (1 - p))[:, None]).T @ X + np.diag(penalty)
        step = np.linalg.solve(hessian, gradient)
        scale = 1.0
        while True:  # backtracking: never accept a step that raises the loss
            candidate = coef - scale * step
            new_loss = _loss(X, y, w, candidate, penalty)
            if new_loss <= loss + 1e-12 or scale < 1e-6:
                break
            scale *= 0.5
        coef, improvement, loss = candidate, loss - new_loss, new_loss
        if np.max(np.abs(scale * step)) < tol or 0 <= improvement < tol:
            break
    return coef
