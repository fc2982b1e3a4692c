"""kernel-labs autograder: one spec per lab, one grader, one benchmark protocol."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

