"""The interactive viewer (``nfldm view``): fly through a scene in the browser, rendered live by
stage 1, and sample, edit, extend, refine and save it (:mod:`nfldm.viewer.server`)."""
