"""The chaos soak: churn and overlapping faults on the leaf-spine lab, with an invariant
checker (``make soak``; a short variant runs in ``make test``). See docs/guarantees.md."""
