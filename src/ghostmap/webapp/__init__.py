"""A local web app for labelling diffraction patterns, guided by the adaptive sampler.

``ghostmap label DATA --labels LABELS.csv`` serves it; :func:`create_app` builds the
FastAPI application for a scan and a label file. FastAPI and uvicorn are the optional
``web`` extra (``pip install 'ghostmap[web]'``).
"""

from __future__ import annotations

__all__ = ["create_app", "LabelSession"]


def __getattr__(name):  # import FastAPI only when the app is asked for
    if name == "create_app":
        from .app import create_app

        return create_app
    if name == "LabelSession":
        from .state import LabelSession

        return LabelSession
    raise AttributeError(name)
