"""Matching paths, one file per family; :mod:`realuid.paths.base` holds the interface."""

from realuid.paths.base import (PARAMETERIZATIONS, AffinePath, MatchingPath, PathSample, Schedule,
                                expand_like)
from realuid.paths.flow import RectifiedFlow

__all__ = ["PARAMETERIZATIONS", "AffinePath", "MatchingPath", "PathSample", "Schedule", "expand_like",
           "RectifiedFlow"]
