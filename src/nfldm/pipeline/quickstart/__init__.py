"""``nfldm quickstart``: the whole pipeline in one resumable command, with an HTML report."""

from nfldm.pipeline.quickstart.config import PRESETS, STAGES, QuickstartConfig, preset, stage_list
from nfldm.pipeline.quickstart.run import QuickstartError, quickstart, status, train_stage_alone

__all__ = ["PRESETS", "STAGES", "QuickstartConfig", "QuickstartError", "preset", "quickstart", "stage_list", "status",
           "train_stage_alone"]
