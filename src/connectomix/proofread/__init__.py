"""Proofreading: the task queue, the versioned edit log, Neuroglancer links, users, the web app and the
simulated proofreader. Everything persistent lives in one SQL database (:mod:`connectomix.proofread.db`)."""
