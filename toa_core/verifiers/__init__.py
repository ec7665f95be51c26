"""Programmatic checks of an answer against what its prompt's record says a right answer must satisfy:
a gold math answer (math_answers, through math-verify) and IFEval-style instruction constraints (constraints).
`checks` reads a prompt's `verify` field into checks and runs them; `toa_core.rewards.verifier` turns the
outcome into a reward."""
