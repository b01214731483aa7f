"""Thin helpers over highspy (HiGHS) shared by the planner's MILP, its N-1 checks and
the independent plan checker: build a model from arrays, solve an LP.

highspy directly rather than ``scipy.optimize``: it takes a starting solution (the
planner's diving heuristic), keeps the basis between bound changes, and spares the
CLI the ~0.3 s import of ``scipy.optimize``.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import highspy
import numpy as np
from scipy.sparse import csc_array, sparray


def model(cost: np.ndarray, a: sparray, col_lower: np.ndarray, col_upper: np.ndarray,
          row_lower: np.ndarray, row_upper: np.ndarray,
          integer: np.ndarray | None = None) -> highspy.Highs:
    """A quiet HiGHS instance minimising ``cost @ x`` subject to
    ``row_lower <= a @ x <= row_upper`` and the column bounds (a MILP when ``integer``
    marks any column)."""
    a = csc_array(a)
    h = _new_highs()
    h.setOptionValue("output_flag", False)
    lp = highspy.HighsLp()
    lp.num_col_, lp.num_row_ = a.shape[1], a.shape[0]
    lp.col_cost_ = np.asarray(cost, float)
    lp.col_lower_ = np.asarray(col_lower, float)
    lp.col_upper_ = np.asarray(col_upper, float)
    lp.row_lower_ = np.asarray(row_lower, float)
    lp.row_upper_ = np.asarray(row_upper, float)
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_ = a.indptr.astype(np.int32)
    lp.a_matrix_.index_ = a.indices.astype(np.int32)
    lp.a_matrix_.value_ = a.data.astype(float)
    lp.a_matrix_.num_col_, lp.a_matrix_.num_row_ = lp.num_col_, lp.num_row_
    if integer is not None and integer.any():
        lp.integrality_ = [highspy.HighsVarType.kInteger if i else
                           highspy.HighsVarType.kContinuous for i in integer]
    h.passModel(lp)
    return h


_banner_done = False


def _new_highs() -> highspy.Highs:
    """A HiGHS instance. The first one a process makes prints HiGHS's version banner
    from C on file descriptor 1, before any option can be set: it would break
    ``--json`` (one document on stdout) and open every printed plan, so it goes to
    /dev/null (plan.json's ``solver`` field names the solver)."""
    global _banner_done
    if _banner_done:
        return highspy.Highs()
    sys.stdout.flush()
    saved_fd = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        h = highspy.Highs()
    finally:
        os.dup2(saved_fd, 1)
        os.close(saved_fd)
        os.close(devnull)
        _banner_done = True
    return h


@dataclass
class LpResult:
    optimal: bool
    x: np.ndarray | None
    objective: float | None
    message: str


def solve_lp(cost: np.ndarray, a: sparray, row_lower: np.ndarray, row_upper: np.ndarray,
             col_lower: np.ndarray | float = 0.0, col_upper: np.ndarray | float = np.inf
             ) -> LpResult:
    """Minimise ``cost @ x`` over ``row_lower <= a @ x <= row_upper`` and column bounds."""
    n = a.shape[1]
    h = model(cost, a, np.broadcast_to(col_lower, n), np.broadcast_to(col_upper, n),
              row_lower, row_upper)
    h.run()
    ok = h.getModelStatus() == highspy.HighsModelStatus.kOptimal
    x = np.asarray(h.getSolution().col_value) if ok else None
    return LpResult(ok, x, float(h.getInfo().objective_function_value) if ok else None,
                    h.modelStatusToString(h.getModelStatus()))
