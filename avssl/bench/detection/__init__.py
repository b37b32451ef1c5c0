"""Spatio-temporal action detection on a frozen video encoder (AVA), like the SlowFast AVA head.

A clip centred on each keyframe goes through the encoder's ``forward_features`` and is averaged
over time (:mod:`.maps`); ``torchvision.ops.roi_align`` and a spatial max pool every person box
from that map (the bench caches these per-box features, not the maps), and dropout, a linear
layer and a sigmoid give independent (multi-label) class scores (:mod:`.head`). The head trains on the
ground-truth boxes with binary cross-entropy and scores the person proposals (:mod:`.train`).
"""
from __future__ import annotations

from avssl.bench.detection.head import RoIActionHead, map_stats, roi_max, rois_from_boxes
from avssl.bench.detection.maps import (KeyframeClips, detection_size, feature_map,
                                        keyframe_maps, keyframe_roi_features, stats_from_sums)
from avssl.bench.detection.train import fit_head, predict, predict_features, train_head

__all__ = ["KeyframeClips", "RoIActionHead", "detection_size", "feature_map", "fit_head",
           "keyframe_maps", "keyframe_roi_features", "map_stats", "predict", "predict_features",
           "roi_max", "rois_from_boxes", "stats_from_sums", "train_head"]
