"""Human-feedback web app (issue 9): Likert ratings with flags and helpful/honest/harmless, pairwise
comparisons with strength and ties, K-way rankings; accounts, export, agreement.

* :mod:`~alignforge.feedback.db`        SQLAlchemy tables and the engine (SQLite WAL by default, PostgreSQL)
* :mod:`~alignforge.feedback.service`   the rules: accounts, import, assignment, idempotent submission, progress
* :mod:`~alignforge.feedback.export`    labels out: as records (export) and the annotators' agreement
* :mod:`~alignforge.feedback.agreement` pairwise agreement and Krippendorff's α
* :mod:`~alignforge.feedback.app`       FastAPI + Jinja2 pages (``create_app(db_url)``)
* :mod:`~alignforge.feedback.cli`       ``alignforge feedback init|adduser|import|serve|export|status``

Heavy imports (fastapi, sqlalchemy) stay inside the submodules: ``import alignforge.feedback`` is free.
"""
