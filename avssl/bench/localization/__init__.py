"""Temporal action localization on clip-feature sequences of untrimmed videos: an anchor-free,
multi-scale head in the spirit of ActionFormer (``head``), its training loop (``train``) and
1D (Soft-)NMS (``nms``)."""
