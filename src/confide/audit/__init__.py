"""The privacy audit (``confide privacy audit``): real attacks on what a site really sends, beside its ledger.

See :mod:`confide.audit.run` for what is measured; the attacks' arithmetic lives in ``confide.privacy.audit_*``.
"""
