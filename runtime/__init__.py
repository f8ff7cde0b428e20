"""Berth's engine: the privileged, Django-free library that owns every byte under RUNTIME_ROOT.

Importing this package has no side effects. Callers (the Celery worker, through
``project.engine``) build what they need from ``runtime.config.RuntimeConfig``.
"""
