"""The ground floor: errors, JSON, crash-safe files, helper processes, paths,
the log, failpoints and address arithmetic.  Imports nothing else of cnilib."""
